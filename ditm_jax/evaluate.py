"""Evaluation around a model: embedding with (model, mesh, params), running the evaluators of
`config.evals` (`evaluation/evaluators.py`) on their cadence, and the run's plots."""

import os

from absl import logging
import jax
from jax.sharding import PartitionSpec as P
import numpy as np

from ditm_jax import sharding
from ditm_jax.data import plan
from ditm_jax.evaluation import evaluators
from ditm_jax.evaluation import plots
from ditm_jax.models import packed


def text_preprocessing(config, data):
  """How texts become tokens (for export sidecars): the vocabulary or the tokenizer's source."""
  text, max_tokens = config.model.text, config.data.max_tokens
  if text == "bigru":
    return (f"bigru word vocab ({data.vocab_size} words incl. <pad> and <unk>, lowercase "
            f"[a-z0-9]+ words, max_tokens {max_tokens})")
  if text == "bert":
    return (f"bert WordPiece tokenizer of {config.model.bert_path} "
            f"({data.vocab_size} ids, [CLS] ... [SEP], max_tokens {max_tokens})")
  return f"{text} tokens ({data.vocab_size} ids, max_tokens {max_tokens})"


class Embedding:
  """The model's towers over NumPy arrays, in fixed-shape chunks split over `mesh`.

  Each device embeds its own rows (a shard_map, as in the train step), so packed towers pack
  per device. One jitted function per tower method, compiled on first use.
  """

  def __init__(self, model, mesh, config, batch_size=500):
    self.model, self.mesh, self.config, self.batch_size = model, mesh, config, batch_size
    self.devices = mesh.devices.size
    self.batch_sharding = sharding.batch_sharding(mesh)
    self._fns = {}

  def _fn(self, method, params):
    if method not in self._fns:
      def embed(p, b):
        def run(m):
          return sharding.data_parallel(
              lambda p, b: m.apply({"params": p}, b, method=method), self.mesh, params,
              self.config, out_specs=P(sharding.DATA))(p, b)
        return packed.select_packing(self.model, run, b, self.devices)
      self._fns[method] = jax.jit(embed, in_shardings=(None, self.batch_sharding),
                                  out_shardings=sharding.replicated(self.mesh))
    return self._fns[method]

  def __call__(self, params, method, arrays):
    """(N, D) float32 NumPy: `model.<method>` of every row of the NumPy batch `arrays`."""
    fn = self._fn(method, params)
    n = len(next(iter(arrays.values())))
    bs = -(-min(self.batch_size, n) // self.devices) * self.devices
    out = []
    for start in range(0, n, bs):
      chunk = {k: v[start:start + bs] for k, v in arrays.items()}
      m = len(next(iter(chunk.values())))
      if m < bs:  # pad the last chunk to the fixed shape
        chunk = {k: np.concatenate([v, np.repeat(v[-1:], bs - m, 0)]) for k, v in chunk.items()}
      rows = plan.host_rows(bs, jax.process_index(), jax.process_count())
      local = {k: v[rows] for k, v in chunk.items()}
      emb = fn(params, sharding.global_batch(self.batch_sharding, local))
      out.append(np.asarray(jax.device_get(emb))[:m])
    return np.concatenate(out).astype(np.float32)

  def texts(self, params, encode_text, texts):
    """(N, D) float32 embeddings of arbitrary strings, tokenised by `encode_text`."""
    texts = list(texts)
    if not texts:
      raise ValueError("no texts to embed")
    max_tokens = self.config.data.max_tokens
    tokens, lengths = encode_text(texts)
    tokens, lengths = np.asarray(tokens)[:, :max_tokens], np.minimum(lengths, max_tokens)
    arrays = {"tokens": tokens.astype(np.int32),
              "token_mask": np.arange(tokens.shape[1])[None, :] < lengths[:, None]}
    return self(params, "embed_texts", arrays)


class Embedder:
  """The model at fixed parameters, as evaluators see it (see `evaluation.evaluators`).

  Split embeddings are computed once per Embedder; `memo` values outlive it when the
  caller passes the same `memo` dict (the Evaluator does, across training steps).
  """

  def __init__(self, embedding, params, step, data, workdir, memo=None):
    self.embedding, self.params, self.step = embedding, params, int(step)
    self.config, self.data, self.workdir = embedding.config, data, workdir
    self.is_main = jax.process_index() == 0
    self._memo = {} if memo is None else memo
    self._cache = {}

  @property
  def text_preprocessing(self):
    return text_preprocessing(self.config, self.data)

  def memo(self, key, fn):
    if key not in self._memo:
      self._memo[key] = fn()
    return self._memo[key]

  def split(self, name):
    if name not in self.data.splits:
      raise ValueError(f"evaluation split {name!r} is not in the data "
                       f"(have {sorted(self.data.splits)})")
    return self.data.splits[name]

  def _embed(self, name, index):
    if (name, index) not in self._cache:
      from ditm_jax.data import memory  # pylint: disable=g-import-not-at-top  (tf.data)
      arrays = memory.eval_arrays(self.split(name), self.config.data.max_tokens)[index]
      method = ("embed_images", "embed_texts")[index]
      self._cache[name, index] = self.embedding(self.params, method, arrays)
    return self._cache[name, index]

  def embed_images(self, name):
    return self._embed(name, 0)

  def embed_captions(self, name):
    return self._embed(name, 1)

  def embed_texts(self, texts):
    return self.embedding.texts(self.params, self.data.encode_text, texts)


def _default_exports(named_specs):
  """One end-of-run export per split that a metric evaluator uses."""
  return {f"export_{split}": {"type": "export", "split": split, "every_steps": 0}
          for split in sorted({s["split"] for s in named_specs.values()})}


class Evaluator:
  """Runs the evaluators of `config.evals` (see `evaluation.evaluators`) on their cadence.

  `which`: 'all' (training), 'metrics' (--mode=eval) or 'exports' (--mode=export; when the
  config lists no export, every split a metric evaluator uses is exported). `writer`: where
  results go when `run(..., write=True)` (a `metrics.MetricsWriter`).
  """

  def __init__(self, embedding, data, workdir, writer=None, which="all"):
    self.embedding, self.data, self.workdir, self.writer = embedding, data, workdir, writer
    config = self.config = embedding.config
    named = evaluators.specs(config)
    for name, spec in list(named.items()):
      if spec["split"] not in data.splits:
        problem = (f"evaluation {name!r}: split {spec['split']!r} is not in the data "
                   f"(have {sorted(data.splits)})")
        if not spec.get("optional", False):
          raise ValueError(problem)
        logging.error("%s; skipped (optional)", problem)
        if jax.process_index() == 0:
          print(f"{problem}; skipped (optional)", flush=True)
        del named[name]
    exports = {n: s for n, s in named.items() if s["type"] == "export"}
    metrics = {n: s for n, s in named.items() if s["type"] != "export"}
    if not exports and (which == "exports" or config.export_at_end):
      exports = _default_exports(metrics)
    self.specs = {"all": {**metrics, **exports}, "metrics": metrics, "exports": exports}[which]
    self.latest = {}  # the latest value of every metric
    self.embedder = None  # the Embedder of the latest run
    self._memo = {}

  def due(self, step, final=False):
    """Names of the evaluators that run at training step `step`."""
    return [n for n, s in self.specs.items() if evaluators.is_due(s, self.config, step, final)]

  def run(self, params, step, names=None, write=True):
    """Runs `names` (default: all) at `params`; writes a metrics.jsonl line when `write`."""
    names = list(self.specs) if names is None else names
    self.embedder = Embedder(self.embedding, params, step, self.data, self.workdir, self._memo)
    results = evaluators.run({n: self.specs[n] for n in names}, self.embedder)
    if write and results:
      self.writer.write(step, results)
    self.latest.update(results)
    return results


def write_plots(workdir, data, embedder, metrics_rows):
  """`DIR/plots/`: training_curves.png and, on the demo, retrieval_examples.png.

  Pictures never stop a run: a failure is logged. `embedder` (the latest evaluation's)
  supplies the demo embeddings; every process embeds, process 0 draws.
  """
  out_dir = os.path.join(workdir, "plots")
  try:
    grid = None
    if embedder is not None and data.scenes:
      demo_split = next((s["split"] for s in evaluators.specs(embedder.config).values()
                         if s["type"] == "demo" and s["split"] in data.splits), None)
      if demo_split is not None:
        split = data.splits[demo_split]
        img = embedder.embed_images(demo_split)
        txt = embedder.embed_captions(demo_split)
        truth = embedder.memo(("relevance", demo_split), data.relevance[demo_split]) > 0
        cpi = split.captions_per_image
        grid = plots.retrieval_grid(data.scenes[demo_split], split.captions, img @ txt.T,
                                    truth, plots.demo_queries(split.num_images, cpi),
                                    split.image_ids, cpi)
    if jax.process_index() != 0:
      return
    plots.save(plots.training_curves(metrics_rows()), os.path.join(out_dir, "training_curves.png"))
    if grid is not None:
      plots.save(grid, os.path.join(out_dir, "retrieval_examples.png"))
    print(f"Plots written to {out_dir}", flush=True)
  except Exception as e:  # pylint: disable=broad-except
    logging.error("Writing plots to %s failed: %s", out_dir, e)
    print(f"warning: writing plots to {out_dir} failed: {e}", flush=True)
