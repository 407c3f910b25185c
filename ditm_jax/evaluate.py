"""Evaluators chosen by config, metrics.jsonl / TensorBoard writing, tables and export."""

import json
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from ditm_jax import sharding
from ditm_jax.data import pipeline
from ditm_jax.evaluation import graded
from ditm_jax.evaluation import recall


class MetricsWriter:
  """Process 0 appends one JSON object per line to DIR/metrics.jsonl and to TensorBoard."""

  def __init__(self, workdir, enabled=True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tb")) if enabled else None

  def truncate_after(self, step):
    """Drops lines past `step`, so a resumed run's file equals an uninterrupted run's."""
    if not self.enabled or not tf.io.gfile.exists(self.path):
      return
    with tf.io.gfile.GFile(self.path) as f:
      lines = [l for l in f if l.strip() and json.loads(l)["step"] <= step]
    with tf.io.gfile.GFile(self.path + ".tmp", "w") as f:
      f.writelines(lines)
    tf.io.gfile.rename(self.path + ".tmp", self.path, overwrite=True)

  def write(self, step, values):
    if not self.enabled:
      return
    with tf.io.gfile.GFile(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **values}) + "\n")
    with self._tb.as_default(step=int(step)):
      for k, v in values.items():
        tf.summary.scalar(k, v)
    self._tb.flush()


def embed_split(trainer, params, split, batch_size=500):
  """Embeddings of every image and caption of `split`, as float32 numpy arrays."""
  images, texts = pipeline.eval_arrays(split, trainer.config.data.max_tokens)
  img = _batched(trainer, params, "embed_images", images, batch_size)
  txt = _batched(trainer, params, "embed_texts", texts, batch_size)
  return img, txt


def _batched(trainer, params, method, arrays, batch_size):
  fns = trainer.__dict__.setdefault("_embed_fns", {})
  if method not in fns:
    model = trainer.model
    fns[method] = jax.jit(lambda p, b: model.apply({"params": p}, b, method=method),
                          in_shardings=(None, trainer.batch_sharding),
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
    rows = pipeline.host_rows(bs, jax.process_index(), jax.process_count())
    local = {k: v[rows] for k, v in chunk.items()}
    emb = fns[method](params, sharding.global_batch(trainer.batch_sharding, local))
    out.append(np.asarray(jax.device_get(emb))[:m])
  return np.concatenate(out).astype(np.float32)


def demo_metrics(img, txt, split, relevance, k=10):
  """Standard 1K recall plus graded metrics from the demo's ground truth."""
  sims = np.asarray(jnp.asarray(img) @ jnp.asarray(txt).T)
  out = recall.i2t_t2i(sims, captions_per_image=split.captions_per_image)
  out["i2t_ndcg10"] = graded.ndcg_at_k(sims, relevance, k=k)
  out["t2i_ndcg10"] = graded.ndcg_at_k(sims.T, relevance.T, k=k)
  out["order_tau"] = graded.order_tau(sims, relevance > 0, split.desc)
  return out


class Evaluator:
  """Runs every evaluation in `config.evals`; records results in metrics.jsonl."""

  def __init__(self, trainer):
    self.trainer = trainer
    self.last_results = None
    self._relevance = {}

  def run(self, params, step, write=True):
    results = {}
    for name, spec in sorted(self.trainer.config.evals.items()):
      try:
        metrics = self._run_one(params, spec)
      except Exception as e:  # pylint: disable=broad-except
        if spec.get("optional", False):
          logging.error("Evaluation %s failed: %s", name, e)
          print(f"evaluation {name} failed (optional, training goes on): {e}", flush=True)
          continue
        raise
      results.update({f"{name}/{k}": float(v) for k, v in metrics.items()})
    if write:
      self.trainer.writer.write(step, results)
    self.last_results = results
    return results

  def _run_one(self, params, spec):
    data = self.trainer.data
    if spec.split not in data.splits:
      raise ValueError(f"evaluation split {spec.split!r} is not in the data "
                       f"(have {sorted(data.splits)})")
    split = data.splits[spec.split]
    img, txt = embed_split(self.trainer, params, split)
    if spec.type == "demo":
      if spec.split not in self._relevance:
        self._relevance[spec.split] = data.relevance[spec.split]()
      return demo_metrics(img, txt, split, self._relevance[spec.split])
    if spec.type == "recall":
      return recall.i2t_t2i(np.asarray(jnp.asarray(img) @ jnp.asarray(txt).T),
                            captions_per_image=split.captions_per_image,
                            fold5=spec.get("fold5", False))
    raise ValueError(f"evaluation type {spec.type!r} is not known; use 'demo' or 'recall'")


_TABLE_COLUMNS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum",
                  "i2t_ndcg10", "t2i_ndcg10", "order_tau")


def table(results_by_run):
  """Markdown table: one row per (run, evaluation), standard then graded metrics."""
  present = [c for c in _TABLE_COLUMNS
             if any(k.endswith("/" + c) for r in results_by_run.values() for k in r)]
  lines = ["| run | eval | " + " | ".join(present) + " |",
           "|---|---|" + "---:|" * len(present)]
  for run, results in results_by_run.items():
    for ev in sorted({k.split("/")[0] for k in results}):
      cells = [_fmt(results.get(f"{ev}/{c}")) for c in present]
      lines.append(f"| {run} | {ev} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _fmt(v):
  if v is None:
    return "-"
  return f"{v:.3f}" if abs(v) < 1.5 else f"{v:.1f}"


def print_table(results, run="this run"):
  if jax.process_index() == 0 and results:
    print(table({run: results}), flush=True)


def export(trainer, params, step):
  """Writes float32 .npy embeddings, ids and caption texts of every evaluated split."""
  out_dir = os.path.join(trainer.workdir, "export")
  written = []
  for split_name in sorted({spec.split for spec in trainer.config.evals.values()}):
    split = trainer.data.splits[split_name]
    img, txt = embed_split(trainer, params, split)
    if jax.process_index() != 0:
      continue
    tf.io.gfile.makedirs(out_dir)
    files = {
        f"{split_name}_images.npy": img,
        f"{split_name}_captions.npy": txt,
        f"{split_name}_image_ids.npy": split.image_ids.astype(np.int64),
        f"{split_name}_caption_image_ids.npy":
            np.repeat(split.image_ids, split.captions_per_image).astype(np.int64),
    }
    for name, arr in files.items():
      with tf.io.gfile.GFile(os.path.join(out_dir, name), "wb") as f:
        np.save(f, arr)
    with tf.io.gfile.GFile(os.path.join(out_dir, f"{split_name}_captions.txt"), "w") as f:
      f.write("\n".join(c.replace("\n", " ") for c in split.captions) + "\n")
    meta = {"step": step, "split": split_name, "embed_dim": int(img.shape[1]),
            "num_images": int(img.shape[0]), "num_captions": int(txt.shape[0]),
            "captions_per_image": split.captions_per_image,
            "text_preprocessing": trainer.config.model.text,
            "config": json.loads(trainer.config.to_json())}
    with tf.io.gfile.GFile(os.path.join(out_dir, f"{split_name}_export.json"), "w") as f:
      json.dump(meta, f, indent=1)
    written.append(split_name)
  if jax.process_index() == 0:
    print(f"Exported embeddings of {', '.join(written)} (step {step}) to {out_dir}", flush=True)
  return out_dir
