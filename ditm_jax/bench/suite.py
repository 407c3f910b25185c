"""Every benchmark in one run, as the JSON-ready results that `python -m ditm_jax.bench` writes.

Results hold "train_step_s" (config name -> median seconds per step), "pairs_per_s",
"eval_5k_s", "eval_5k_numpy_s", "descriptiveness_616k_s", "pipeline_rows_per_s",
"peak_rss_mb", "machine", "loss_memory", "sharded_vs_plain_8dev", "text_tower_coco_lengths"
and "notes", with each measurement's details beside them. `quick` shrinks sizes and repeats
for a smoke run (its numbers are not the targets').
"""

import os

import jax

from ditm_jax.bench import descriptiveness
from ditm_jax.bench import loss_memory
from ditm_jax.bench import machine
from ditm_jax.bench import ranking
from ditm_jax.bench import setups
from ditm_jax.bench import text_tower
from ditm_jax.bench import train_step
from ditm_jax.bench import versus_torch


def _demo_and_bigru_rows(results, details, quick, steps):
  """The demo's and coco:text=bigru,tiny's train steps and the demo's input pipeline."""
  from ditm_jax.bench import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  config, data, model = setups.demo_setup("tiny" if quick else None)
  name = "demo" + (":tiny" if quick else "")
  details[name] = train_step.time_train_step(
      config, model, next(data.train.batches(config, 0)), steps)
  results["pipeline"] = pipeline.time_pipeline(config, data, 5 if quick else 50)
  results["pipeline_rows_per_s"] = results["pipeline"]["rows_per_s"]
  if os.path.exists(os.path.join(setups.ROOT, "configs", "coco.py")):
    c, m, b = setups.coco_bigru_tiny_setup()
    details["coco:text=bigru,tiny"] = train_step.time_train_step(c, m, b, steps)
    results["notes"].append(f"coco:text=bigru,tiny runs on a synthetic batch (vocabulary "
                            f"{setups.COCO_BIGRU_VOCAB} words); no prepared COCO data is read")
  else:
    results["notes"].append("configs/coco.py absent: coco:text=bigru,tiny not timed")


def _reference_rows(results, details, quick, steps, torch_python, torch_rounds, bert_base,
                    dtype):
  """The reference model's train steps (packed, padded, BERT-base) and their pieces."""
  c, m, b = setups.reference_setup(dtype=dtype)
  details["reference"] = train_step.time_train_step(c, m, b, steps)
  details["reference"]["packing"] = setups.packing_of(c, b)
  if torch_python and torch_rounds:
    results["torch_interleaved"] = versus_torch.interleaved_with_torch(
        c, m, b, torch_python, torch_rounds)
  if not quick:
    details["reference"]["profile_s"] = train_step.profile_reference(c, m, b)
    details["reference:padded"] = train_step.time_train_step(
        *setups.reference_setup(padded=True, dtype=dtype), steps)
  if bert_base:
    details["reference:bert-base"] = train_step.time_train_step(
        *setups.reference_setup(bert=setups.BERT_BASE, dtype=dtype), steps)


def run(quick=False, torch_python=None, bert_base=None, reference_dtype="float32",
        only_reference=False, torch_rounds=0, coco_captions=setups.COCO_CAPTIONS):
  """All benchmarks (or, with `only_reference`, the reference rows); JSON-ready results.

  `bert_base` (default: on GPU/TPU only) adds the reference model with BERT-base;
  `torch_rounds` (with `torch_python`) adds `versus_torch.interleaved_with_torch`;
  `coco_captions` (COCO's 5K test captions, five lines per image) feeds the text tower at
  real caption lengths and the descriptiveness timing (the demo's captions where absent).
  """
  results = {"quick": quick, "machine": machine.machine(), "notes": []}
  if bert_base is None:
    bert_base = jax.default_backend() != "cpu"
  if torch_python:  # first, so that a broken interpreter fails before the long part
    results["torch_reference"] = versus_torch.torch_reference(torch_python)
    if bert_base:
      results["torch_reference_bert_base"] = versus_torch.torch_reference(
          torch_python, bert_base=True)
  steps = 2 if quick else 7
  details = {}
  if only_reference:
    results["notes"].append("--only_reference: the reference rows alone")
  else:
    _demo_and_bigru_rows(results, details, quick, steps)
  _reference_rows(results, details, quick, steps, torch_python, torch_rounds, bert_base,
                  reference_dtype)
  results.update(train_step_s={k: v["median_s"] for k, v in details.items()},
                 pairs_per_s={k: v["pairs_per_s"] for k, v in details.items()},
                 train_step=details)
  if reference_dtype != "float32":
    results["notes"].append(f"reference models compute in {reference_dtype}")
  train_step.utilisation(results, reference_dtype)
  if only_reference:
    results["peak_rss_mb"] = machine.peak_rss_mb()[0]
    return results

  n = 1000 if quick else 5000
  results["eval"] = ranking.time_eval(n, repeats=1 if quick else 3)
  results["eval_5k_s"] = results["eval"]["median_s"]
  results["eval_5k_numpy_s"] = results["eval"].get("numpy_s")
  if quick:
    results["notes"].append("--quick: eval on 1000 x 5000, descriptiveness on 61,600 captions")

  lengths = text_tower.coco_caption_lengths(coco_captions)
  if lengths is None:
    results["notes"].append(f"{coco_captions} absent: no text tower at COCO caption lengths")
  else:
    results["text_tower_coco_lengths"] = text_tower.text_tower_at_caption_lengths(
        lengths, rounds=1 if quick else 3)
  results["descriptiveness"] = descriptiveness.time_descriptiveness(
      61_600 if quick else 616_000, coco_captions)
  results["descriptiveness_616k_s"] = results["descriptiveness"]["fit_plus_score_s"]

  devices8 = loss_memory.run_devices8(quick)
  results["sharded_vs_plain_8dev"] = devices8.get("demo_train_step", devices8)
  results["loss_memory"] = devices8.get("loss_memory", devices8)
  own, children = machine.peak_rss_mb()
  results["peak_rss_mb"] = own
  results["peak_rss_children_mb"] = children
  results["machine"]["load_average_after"] = machine.load_average()
  return results
