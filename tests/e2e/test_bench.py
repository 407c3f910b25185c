"""ditm_jax.bench, module by module (the whole run, `python -m ditm_jax.bench`, takes minutes)."""
import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from ditm_jax.bench import descriptiveness
from ditm_jax.bench import machine
from ditm_jax.bench import pipeline
from ditm_jax.bench import ranking
from ditm_jax.bench import setups
from ditm_jax.bench import table
from ditm_jax.bench import text_tower
from ditm_jax.bench import train_step
from ditm_jax.bench import versus_torch
from ditm_jax.data import packing_stats


def test_machine_describes_cpu_and_jax():
  m = machine.machine()
  assert m["logical_cores"] >= 1 and m["backend"] == "cpu" and m["devices"]
  own, _ = machine.peak_rss_mb()
  assert own > 50


def test_ranking_matches_the_numpy_reference():
  out = ranking.time_eval(200, repeats=1)
  assert out["shape"] == [200, 1000] and out["same_as_numpy"]
  assert out["median_s"] > 0 and out["numpy_s"] > 0 and out["from_embeddings_s"] > 0


def test_descriptiveness_on_repeated_captions():
  out = descriptiveness.time_descriptiveness(3000)
  assert out["captions"] == 3000 and "repeated" in out["source"]
  assert math.isclose(out["fit_plus_score_s"], out["fit_s"] + out["score_s"])


def test_train_step_timing_uses_the_trainer_step():
  config, model, batch = setups.coco_bigru_tiny_setup()
  assert batch["regions"].shape == (32, 36, 2048) and batch["tokens"].shape == (64, 32)
  out = train_step.time_train_step(config, model, batch, steps=1)
  assert np.isfinite(out["loss"]) and out["devices"] >= 1
  assert math.isclose(out["pairs_per_s"], 64 / out["median_s"])
  assert out["matmul_flops"] > 0  # counted by flops.py (tests/unit/bench/test_flops.py)
  assert math.isclose(out["matmul_flops_per_s"], out["matmul_flops"] / out["median_s"])


def test_reference_model_shapes():
  config, model, batch = setups.reference_setup()
  assert config.batch_size == 128 and config.data.captions_per_image == 1
  assert config.loss.matching == "triplet" and config.loss.relax_beta == 0
  assert config.loss.order_weight == 0 and config.loss.sum_violation_steps == 0
  assert batch["regions"].shape == (128, 36, 2048) and batch["tokens"].shape == (128, 32)
  assert model.text_tower.bert_config.num_hidden_layers == 4
  assert model.text_tower.bert_config.hidden_size == 256 and model.text_tower.embed_dim == 1024
  # Packing buffers derived for the batch's distribution (tests/unit/data/test_packing_stats.py),
  # and the batch timed fits them: the packed step is the one measured.
  text, regions = config.model.text_token_capacity, config.model.region_capacity
  assert (model.text_tower.capacity, model.image_tower.capacity) == (text, regions)
  assert 0.625 < text < 0.75 and 0.8 < regions < 0.85  # mean fills 20/32 and 28.8/36
  assert setups.packing_of(config, batch) == {"text_token_capacity": text,
                                             "region_capacity": regions, "batch_fits": True}
  assert batch["token_mask"].sum() <= text * 128 * 32 < batch["token_mask"].size


def test_table_lists_every_measurement():
  step = {"median_s": 0.5, "pairs_per_s": 256.0}
  results = {
      "train_step_s": {"demo": 0.5}, "pairs_per_s": {"demo": 256.0},
      "train_step": {"demo": step, "reference": {
          **step, "profile_s": {"text tower": 0.2},
          "packing": {"text_token_capacity": 0.69, "region_capacity": 0.82, "batch_fits": True}}},
      "eval": {"shape": [5000, 25000], "median_s": 0.2, "numpy_s": 9.0,
               "from_embeddings_s": 0.4},
      "descriptiveness": {"captions": 616000, "fit_plus_score_s": 12.0},
      "pipeline_rows_per_s": 5000.0,
      "text_tower_coco_lengths": {
          "fractions": {"fixed": 0.75, "derived": 0.348, "padded": 0.0},
          "gflop": {"fixed": 162.7, "derived": 78.6, "padded": 215.0},
          "median_s": {"fixed": 2.7, "derived": 1.6, "padded": 3.8}},
      "sharded_vs_plain_8dev": {"plain": step, "sharded": step},
      "loss_memory": {"batch_size": 4096, "triplet": {
          "plain_temp_bytes": 2**30, "sharded_temp_bytes": 2**28,
          "one_device_temp_bytes": 2**32}},
      "peak_rss_mb": 900.0,
      "machine": {"cpu": "x", "usable_cores": 2, "backend": "cpu",
                  "load_average_1_5_15": [1, 1, 1]},
  }
  text = table.table(results)
  for piece in ("train step demo", "reference: text tower", "5000x25000", "NumPy", "616,000",
                "rows/s", "sharded objective", "1024 / 256 / 4096", "peak RSS",
                "0.690 / 0.820 (the batch fits)",
                "0.348 (derived) / padded (s; GFLOP) | 2.700 / 1.600 / 3.800; 162.7 / 78.6 / "
                "215.0 |"):
    assert piece in text, piece


def _results(train_step, **extra):
  """`train_step` rows plus the other fields `table.table` reads, and `extra`."""
  return {
      "train_step_s": {k: v["median_s"] for k, v in train_step.items()},
      "pairs_per_s": {k: v["pairs_per_s"] for k, v in train_step.items()},
      "train_step": train_step,
      "eval": {"shape": [5000, 25000], "median_s": 0.2, "from_embeddings_s": 0.4},
      "descriptiveness": {"captions": 616000, "fit_plus_score_s": 12.0},
      "pipeline_rows_per_s": 5000.0, "peak_rss_mb": 900.0,
      "machine": {"cpu": "x", "usable_cores": 2, "backend": "cpu",
                  "load_average_1_5_15": [1, 1, 1]},
      **extra,
  }


def test_table_compares_the_pytorch_reading():
  step = {"median_s": 0.5, "pairs_per_s": 256.0}
  results = _results(
      {"reference": step, "reference:bert-base": {"median_s": 4.0, "pairs_per_s": 32.0}},
      torch_reference={"step_s": 1.0, "torch": "9.9", "image_tower_fwd_bwd_s": 0.3,
                       "text_tower_fwd_bwd_s": 0.4},
      torch_reference_bert_base={"step_s": 6.0, "torch": "9.9"})
  text = table.table(results)
  assert "| reference step, PyTorch 9.9 on this machine (s) | 1.000 (this code: 2.00x) |" in text
  assert "| reference, PyTorch: text tower fwd bwd (s) | 0.400 |" in text
  assert ("| reference with BERT-base, PyTorch 9.9 on this machine (s) | 6.000 (this code: "
          "1.50x) |") in text


def test_table_states_the_utilisation():
  step = {"median_s": 2.0, "pairs_per_s": 64.0, "matmul_flops": 100e9,
          "matmul_flops_per_s": 50e9, "devices": 1, "share_of_measured_peak": 0.25, "mfu": 0.1}
  results = _results({"reference:bert-base": step}, matmul_peak={
      "flops_per_s": 200e9, "size": 8192, "dtype": "bfloat16", "spec_flops_per_s": 500e9})
  text = table.table(results)
  assert "| matmul peak, 8192^2 bfloat16, measured (GFLOP/s) | 200 (datasheet 500) |" in text
  assert ("| reference:bert-base: matmul GFLOP per step, GFLOP/s per device, share of measured "
          "peak, MFU | 100.0, 50, 25%, 10.0% |") in text


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None,
                    reason="torch is installed here: the failure path cannot be shown")
def test_torch_reference_without_torch_is_one_clear_error():
  with pytest.raises(SystemExit) as raised:
    versus_torch.torch_reference(sys.executable)
  message = str(raised.value)
  assert message.startswith(f"error: --torch_python={sys.executable}: ") and "torch" in message


def test_interleaved_rounds_alternate_pytorch_and_ours(tmp_path, monkeypatch):
  """PyTorch (a fake interpreter printing torch_reference's JSON line) and our step (a stand-in
  runner with known step times) alternate, round by round; ratios per round."""
  fake = tmp_path / "python"
  fake.write_text(f"#!/bin/sh\necho torch >> {tmp_path / 'order'}\n"
                  "echo '{\"step_s\": 3.0, \"torch\": \"9.9\"}'\n")
  fake.chmod(0o755)
  ours = iter([[9.0, 9.0], [1.0, 2.0, 1.5, 9.0, 1.2], [1.5, 1.5, 1.5, 1.5, 1.5]])

  def runner(config, model, batch, mesh=None):
    def run(n):
      times = next(ours)
      assert len(times) == n
      (tmp_path / "order").open("a").write("ours\n")
      return times
    return run, 1e9, 1
  monkeypatch.setattr(train_step, "step_runner", runner)
  out = versus_torch.interleaved_with_torch(None, None, None, str(fake), rounds=2)
  order = (tmp_path / "order").read_text().split()
  assert order == ["ours", "torch", "ours", "torch", "ours"]  # warm-up, then alternating
  assert out["torch_s"] == [3.0, 3.0] and out["ours_s"] == [1.5, 1.5]
  assert out["ratio"] == [2.0, 2.0] and out["ratio_median"] == 2.0
  text = table.table(_results({"reference": {"median_s": 0.5, "pairs_per_s": 256.0}},
                              torch_interleaved=out))
  assert ("| reference step, ours / PyTorch, 2 interleaved rounds, medians (s) | 1.500 / 3.000 "
          "(this code: 2.00x, rounds 2.00-2.00x) |") in text


def test_text_tower_at_caption_lengths_packs_into_the_derived_buffer():
  lengths = np.random.default_rng(0).integers(3, 9, (40, 5))  # a third to a half of 16
  tiny = dict(vocab_size=2000, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=32)
  out = text_tower.text_tower_at_caption_lengths(lengths, bert=tiny, images=8, k=2, max_tokens=16,
                                            rounds=1)
  derived = packing_stats.fraction(packing_stats.caption_sum_counts(lengths, 16)["2"], 8, 32, 5e-4)
  assert out["fractions"] == {"fixed": 0.75, "derived": derived, "padded": 0.0}
  assert out["fits"] == {"fixed": True, "derived": True, "padded": False}
  assert out["gflop"]["derived"] < out["gflop"]["fixed"] < out["gflop"]["padded"]
  assert 3 / 16 <= out["mean_fill"] <= 8 / 16 and set(out["median_s"]) == set(out["fractions"])
  lengths = text_tower.coco_caption_lengths()
  if lengths is not None:  # ../shared/data: 25,000 captions, about a third of 40 tokens
    assert lengths.shape == (5000, 5) and 0.3 < lengths.mean() / 40 < 0.37


def test_pipeline_rate_of_the_demo():
  config, data, _ = setups.demo_setup("tiny")
  out = pipeline.time_pipeline(config, data, 3)
  assert out["rows_per_s"] > 0 and out["batch_size"] == config.batch_size


def test_reference_rows_need_no_tensorflow():
  """`--only_reference` runs where TensorFlow is not installed (an accelerator host)."""
  # The whole --only_reference run with TensorFlow blocked; the step timing (tested above) is
  # replaced by a count of its calls, so no model compiles here.
  code = ("import sys; sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None\n"
          "from ditm_jax.bench import suite, train_step\n"
          "calls = []\n"
          "def timed(config, model, batch, steps):\n"
          "  calls.append(model.text_tower.bert_config.hidden_size)\n"
          "  return dict(median_s=1.0, pairs_per_s=128.0, matmul_flops=1e9,\n"
          "              matmul_flops_per_s=1e9, devices=1)\n"
          "train_step.time_train_step = timed\n"
          "results = suite.run(quick=True, bert_base=True, only_reference=True)\n"
          "print(sorted(results['train_step']), calls, 'share_of_measured_peak' in\n"
          "      results['train_step']['reference:bert-base'])")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=setups.ROOT, env=dict(os.environ, PYTHONPATH=setups.ROOT), timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == (
      "['reference', 'reference:bert-base'] [256, 768] True")
  # The table of such a run has only the reference rows and the machine.
  results = _results({"reference": {"median_s": 0.5, "pairs_per_s": 256.0}})
  for key in ("eval", "descriptiveness", "pipeline_rows_per_s"):
    del results[key]
  assert "| train step reference (s) | 0.500 (256 pairs/s) |" in table.table(results)
