"""What a run writes about itself: DIR/metrics.jsonl (+ TensorBoard) and result tables.

TensorFlow (for gs:// paths and TensorBoard) is imported only when a file is written or read,
so `ditm_jax.report` prints tables without it.
"""

import json
import os

import jax


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


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
    if not self.enabled or not _tf().io.gfile.exists(self.path):
      return
    lines = [json.dumps(row) + "\n" for row in self.rows() if row["step"] <= step]
    with _tf().io.gfile.GFile(self.path + ".tmp", "w") as f:
      f.write("".join(lines))  # GFile has no writelines
    _tf().io.gfile.rename(self.path + ".tmp", self.path, overwrite=True)

  def rows(self):
    """The JSON objects of metrics.jsonl in order, without a torn last line ([]: no file)."""
    if not _tf().io.gfile.exists(self.path):
      return []
    with _tf().io.gfile.GFile(self.path) as f:
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
    with _tf().io.gfile.GFile(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **values}) + "\n")
    if self._tb is None:
      self._tb = _tf().summary.create_file_writer(self._tb_dir)
    with self._tb.as_default(step=int(step)):
      for k, v in values.items():
        _tf().summary.scalar(k, v)
    self._tb.flush()


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
  with _tf().io.gfile.GFile(os.path.join(workdir, "eval_results.json"), "w") as f:
    json.dump({"step": int(step), **results}, f, indent=1)
  with _tf().io.gfile.GFile(os.path.join(workdir, "eval_results.md"), "w") as f:
    f.write(f"Evaluation at step {int(step)}\n\n{table({'this run': results})}\n")
