"""The trainer's side of evaluation: embedding with the model, running the evaluators of
`config.evals` (`evaluation/evaluators.py`) on their cadence, metrics.jsonl / TensorBoard,
result tables, exports and plots."""

import json
import os

from absl import logging
import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import tensorflow as tf

from ditm_jax import sharding
from ditm_jax.data import memory
from ditm_jax.data import plan
from ditm_jax.evaluation import evaluators
from ditm_jax.evaluation import plots
from ditm_jax.models import model as model_lib


class MetricsWriter:
  """Process 0 appends one JSON object per line to DIR/metrics.jsonl and to TensorBoard."""

  def __init__(self, workdir, enabled=True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    self._tb_dir, self._tb = os.path.join(workdir, "tb"), None  # opened at the first write

  def truncate_after(self, step):
    """Drops lines past `step`, so a resumed run's file equals an uninterrupted run's.

    A torn last line (a run killed while writing it) is dropped too.
    """
    if not self.enabled or not tf.io.gfile.exists(self.path):
      return
    lines = [json.dumps(row) + "\n" for row in self.rows() if row["step"] <= step]
    with tf.io.gfile.GFile(self.path + ".tmp", "w") as f:
      f.write("".join(lines))  # GFile has no writelines
    tf.io.gfile.rename(self.path + ".tmp", self.path, overwrite=True)

  def rows(self):
    """The JSON objects of metrics.jsonl in order, without a torn last line ([]: no file)."""
    if not tf.io.gfile.exists(self.path):
      return []
    with tf.io.gfile.GFile(self.path) as f:
      lines = [l for l in f if l.strip()]
    rows = []
    for i, line in enumerate(lines):
      try:
        rows.append(json.loads(line))
      except ValueError:
        if i < len(lines) - 1:
          raise ValueError(f"{self.path}: line {i + 1} is not JSON; fix or remove that "
                           "line") from None  # only the last line can be torn by a kill
    return rows

  def write(self, step, values):
    if not self.enabled:
      return
    with tf.io.gfile.GFile(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **values}) + "\n")
    if self._tb is None:
      self._tb = tf.summary.create_file_writer(self._tb_dir)
    with self._tb.as_default(step=int(step)):
      for k, v in values.items():
        tf.summary.scalar(k, v)
    self._tb.flush()


def text_preprocessing(config, data):
  """How texts become tokens (for export sidecars): the vocabulary or the tokenizer's source."""
  text, max_tokens = config.model.text, config.data.max_tokens
  if text == "bigru":
    return (f"bigru word vocab ({data.vocab_size} words incl. <pad> and <unk>, lowercase "
            f"[a-z0-9]+ words, max_tokens {max_tokens})")
  if text == "bert":
    return (f"bert WordPiece tokenizer of {config.model.get('bert_path', '?')} "
            f"({data.vocab_size} ids, [CLS] ... [SEP], max_tokens {max_tokens})")
  return f"{text} tokens ({data.vocab_size} ids, max_tokens {max_tokens})"


def _batched(trainer, params, method, arrays, batch_size=500):
  """`model.<method>` over numpy `arrays` in fixed-shape chunks; float32 numpy out."""
  fns = trainer.__dict__.setdefault("_embed_fns", {})
  if method not in fns:
    model = trainer.model
    # Each device embeds its own rows (a shard_map, as in the train step): a tower that packs
    # its tokens (BERT, `model.text_token_capacity`) then packs per device, when they fit.
    def embed(p, b):
      def run(m):
        return sharding.data_parallel(
            lambda p, b: m.apply({"params": p}, b, method=method), trainer.mesh, params,
            trainer.config, out_specs=P(sharding.DATA))(p, b)
      return model_lib.select_packing(model, run, b, trainer.num_devices)
    fns[method] = jax.jit(embed, in_shardings=(None, trainer.batch_sharding),
                          out_shardings=sharding.replicated(trainer.mesh))
  n = len(next(iter(arrays.values())))
  multiple = trainer.num_devices
  bs = -(-min(batch_size, n) // multiple) * multiple
  out = []
  for start in range(0, n, bs):
    chunk = {k: v[start:start + bs] for k, v in arrays.items()}
    m = len(next(iter(chunk.values())))
    if m < bs:  # pad the last chunk to the fixed shape
      chunk = {k: np.concatenate([v, np.repeat(v[-1:], bs - m, 0)]) for k, v in chunk.items()}
    rows = plan.host_rows(bs, jax.process_index(), jax.process_count())
    local = {k: v[rows] for k, v in chunk.items()}
    emb = fns[method](params, sharding.global_batch(trainer.batch_sharding, local))
    out.append(np.asarray(jax.device_get(emb))[:m])
  return np.concatenate(out).astype(np.float32)


def embed_texts(trainer, params, texts):
  """(N, D) float32 embeddings of arbitrary strings through the model's text tower."""
  texts = list(texts)
  if not texts:
    raise ValueError("no texts to embed")
  max_tokens = trainer.config.data.max_tokens
  tokens, lengths = trainer.data.encode_text(texts)
  tokens, lengths = np.asarray(tokens)[:, :max_tokens], np.minimum(lengths, max_tokens)
  arrays = {"tokens": tokens.astype(np.int32),
            "token_mask": np.arange(tokens.shape[1])[None, :] < lengths[:, None]}
  return _batched(trainer, params, "embed_texts", arrays)


class Embedder:
  """The model at fixed parameters, as evaluators see it (see `evaluation.evaluators`).

  Split embeddings are computed once per Embedder; `memo` values outlive it when the
  caller passes the same `memo` dict (the Evaluator does, across training steps).
  """

  def __init__(self, trainer, params, step, memo=None):
    self.trainer, self.params, self.step = trainer, params, int(step)
    self.config, self.data, self.workdir = trainer.config, trainer.data, trainer.workdir
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
      arrays = memory.eval_arrays(self.split(name), self.config.data.max_tokens)[index]
      method = ("embed_images", "embed_texts")[index]
      self._cache[name, index] = _batched(self.trainer, self.params, method, arrays)
    return self._cache[name, index]

  def embed_images(self, name):
    return self._embed(name, 0)

  def embed_captions(self, name):
    return self._embed(name, 1)

  def embed_texts(self, texts):
    return embed_texts(self.trainer, self.params, texts)


def _default_exports(named_specs):
  """One end-of-run export per split that a metric evaluator uses."""
  return {f"export_{split}": {"type": "export", "split": split, "every_steps": 0}
          for split in sorted({s["split"] for s in named_specs.values()})}


class Evaluator:
  """Runs the evaluators of `config.evals` (see `evaluation.evaluators`) for a trainer.

  `which`: 'all' (training), 'metrics' (--mode=eval) or 'exports' (--mode=export; when the
  config lists no export, every split a metric evaluator uses is exported).
  """

  def __init__(self, trainer, which="all"):
    self.trainer = trainer
    config = trainer.config
    named = evaluators.specs(config)
    for name, spec in list(named.items()):
      if spec["split"] not in trainer.data.splits:
        problem = (f"evaluation {name!r}: split {spec['split']!r} is not in the data "
                   f"(have {sorted(trainer.data.splits)})")
        if not spec.get("optional", False):
          raise ValueError(problem)
        logging.error("%s; skipped (optional)", problem)
        if trainer.is_main:
          print(f"{problem}; skipped (optional)", flush=True)
        del named[name]
    exports = {n: s for n, s in named.items() if s["type"] == "export"}
    metrics = {n: s for n, s in named.items() if s["type"] != "export"}
    if not exports and (which == "exports" or config.get("export_at_end", False)):
      exports = _default_exports(metrics)
    self.specs = {"all": {**metrics, **exports}, "metrics": metrics, "exports": exports}[which]
    self.latest = {}  # the latest value of every metric
    self.embedder = None  # the Embedder of the latest run
    self._memo = {}

  def due(self, step, final=False):
    """Names of the evaluators that run at training step `step`."""
    return [n for n, s in self.specs.items()
            if evaluators.is_due(s, self.trainer.config, step, final)]

  def run(self, params, step, names=None, write=True):
    """Runs `names` (default: all) at `params`; writes a metrics.jsonl line when `write`."""
    names = list(self.specs) if names is None else names
    self.embedder = Embedder(self.trainer, params, step, self._memo)
    results = evaluators.run({n: self.specs[n] for n in names}, self.embedder)
    if write and results:
      self.trainer.writer.write(step, results)
    self.latest.update(results)
    return results


_RECALLS = tuple(f"{d}_r{k}" for d in ("i2t", "t2i", "t2t", "i2i") for k in (1, 5, 10))
_TABLE_COLUMNS = _RECALLS + ("rsum", "i2t_ndcg10", "t2i_ndcg10", "order_tau", "grade_tau",
                             "sits_spearman", "sts_spearman", "sis_spearman", "precision",
                             "recall", "d_corr")


def table(results_by_run):
  """Markdown: a row per (run, evaluation); evaluations with the same columns share a table.

  Recalls and rsum are percentages with one decimal, other metrics fractions with three.
  """
  rows = {}  # columns -> table rows
  for run, results in results_by_run.items():
    for ev in sorted({k.split("/")[0] for k in results}):
      columns = tuple(c for c in _TABLE_COLUMNS if f"{ev}/{c}" in results)
      if columns:
        cells = [_fmt(c, results[f"{ev}/{c}"]) for c in columns]
        rows.setdefault(columns, []).append(f"| {run} | {ev} | " + " | ".join(cells) + " |")
  tables = ["\n".join(["| run | eval | " + " | ".join(columns) + " |",
                       "|---|---|" + "---:|" * len(columns), *lines])
            for columns, lines in rows.items()]
  return "\n\n".join(tables)


def _fmt(column, value):
  return f"{value:.1f}" if column in _RECALLS or column == "rsum" else f"{value:.3f}"


def print_table(results, run="this run"):
  if jax.process_index() == 0 and results:
    print(table({run: results}), flush=True)


def write_results(workdir, step, results):
  """`DIR/eval_results.json` ({"step", "<eval>/<metric>": value}) and the table as `.md`."""
  if jax.process_index() != 0:
    return
  with tf.io.gfile.GFile(os.path.join(workdir, "eval_results.json"), "w") as f:
    json.dump({"step": int(step), **results}, f, indent=1)
  with tf.io.gfile.GFile(os.path.join(workdir, "eval_results.md"), "w") as f:
    f.write(f"Evaluation at step {int(step)}\n\n{table({'this run': results})}\n")


def export(trainer, params, step):
  """Runs the export evaluators (`Evaluator(which='exports')`); returns the export folder."""
  evaluator = Evaluator(trainer, which="exports")
  evaluator.run(params, step, write=False)
  return os.path.join(trainer.workdir, "export")


def write_plots(trainer, embedder):
  """`DIR/plots/`: training_curves.png and, on the demo, retrieval_examples.png.

  Pictures never stop a run: a failure is logged. `embedder` (the latest evaluation's)
  supplies the demo embeddings; every process embeds, process 0 draws.
  """
  out_dir = os.path.join(trainer.workdir, "plots")
  try:
    demo_split = next((s["split"] for s in evaluators.specs(trainer.config).values()
                       if s["type"] == "demo" and s["split"] in trainer.data.splits), None)
    grid = None
    if embedder is not None and demo_split is not None and trainer.data.scenes:
      split = trainer.data.splits[demo_split]
      img = embedder.embed_images(demo_split)
      txt = embedder.embed_captions(demo_split)
      truth = embedder.memo(("relevance", demo_split), trainer.data.relevance[demo_split]) > 0
      cpi = split.captions_per_image
      grid = plots.retrieval_grid(trainer.data.scenes[demo_split], split.captions, img @ txt.T,
                                  truth, plots.demo_queries(split.num_images, cpi),
                                  split.image_ids, cpi)
    if jax.process_index() != 0:
      return
    rows = []
    if tf.io.gfile.exists(trainer.writer.path):
      with tf.io.gfile.GFile(trainer.writer.path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    plots.save(plots.training_curves(rows), os.path.join(out_dir, "training_curves.png"))
    if grid is not None:
      plots.save(grid, os.path.join(out_dir, "retrieval_examples.png"))
    print(f"Plots written to {out_dir}", flush=True)
  except Exception as e:  # pylint: disable=broad-except
    logging.error("Writing plots to %s failed: %s", out_dir, e)
    print(f"warning: writing plots to {out_dir} failed: {e}", flush=True)
