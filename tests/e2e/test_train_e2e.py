"""End to end through `python -m ditm_jax.main` on the tiny demo: train, eval, export,
resume after a kill, 1 vs 8 devices, and user errors."""

import os
import shutil
import subprocess

import numpy as np
import pytest

from tests import e2e_util as e2e

TINY = "configs/demo.py:tiny"


@pytest.fixture(scope="module")
def trained(tiny_demo):
  return tiny_demo


def test_train_writes_metrics_table_and_export(trained):
  workdir, stdout = trained
  rows = e2e.metrics(workdir)
  losses = e2e.train_losses(workdir)
  assert sorted(losses) == [10, 20, 30, 40]
  assert all(np.isfinite(v) for v in losses.values())
  train_rows = [r for r in rows if "train/loss" in r]
  for key in ("train/match", "train/order", "train/pairs_per_s"):
    assert key in train_rows[-1]
  for row in train_rows:  # the collapse detector's inputs and verdict (ditm_jax/collapse.py)
    assert row["train/sim_gap"] == pytest.approx(row["train/pos_sim"] - row["train/neg_sim"])
    assert row["train/collapsed"] == 0.0
  assert "collapsed" not in stdout
  evals = [r for r in rows if "demo_test/rsum" in r]
  assert [r["step"] for r in evals] == [20, 40]
  final = evals[-1]
  recalls = [final[f"demo_test/{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
  assert np.isclose(final["demo_test/rsum"], sum(recalls))
  assert 0 <= final["demo_test/i2t_ndcg10"] <= 1
  assert "| demo_test |" in stdout and "rsum" in stdout
  exp = workdir / "export"
  img, cap = np.load(exp / "test_images.npy"), np.load(exp / "test_captions.npy")
  assert img.dtype == np.float32 and img.shape == (100, 64) and cap.shape == (500, 64)
  np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
  assert len((exp / "test_captions.txt").read_text().splitlines()) == 500
  assert np.load(exp / "test_caption_image_ids.npy").shape == (500,)


def test_eval_and_export_modes_reproduce_final_metrics(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)  # the shared run stays as trained
  final = [r for r in e2e.metrics(workdir) if "demo_test/rsum" in r][-1]
  exported = np.load(workdir / "export" / "test_images.npy")
  e2e.run(TINY, workdir, mode="eval")
  import json
  results = json.loads((workdir / "eval_results.json").read_text())
  assert results["step"] == 40
  for key in ("demo_test/rsum", "demo_test/t2i_r1", "demo_test/order_tau"):
    assert np.isclose(results[key], final[key], rtol=1e-5), key
  assert results["train/collapsed"] == 0.0
  os.remove(workdir / "export" / "test_images.npy")
  e2e.run(TINY, workdir, mode="export")
  np.testing.assert_allclose(np.load(workdir / "export" / "test_images.npy"), exported, atol=1e-6)


def test_eval_mode_reports_a_collapsed_training_run(trained, tmp_path):
  """--mode=eval repeats the trainer's verdict from metrics.jsonl's last train line."""
  import json  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  rows = e2e.metrics(workdir)
  for row in rows:  # as a collapsed run logs them: no gap from step 20 on
    if "train/loss" in row:
      row["train/neg_sim"] = row["train/pos_sim"] - (0.5 if row["step"] < 20 else 0.0)
      row["train/collapsed"] = float(row["step"] == 40)
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  proc = e2e.run(TINY, workdir, mode="eval")
  warning = [l for l in proc.stdout.splitlines() if l.startswith("warning: training collapsed")]
  assert len(warning) == 1 and "at step 40" in warning[0] and "since step 20" in warning[0]
  results = json.loads((workdir / "eval_results.json").read_text())
  assert results["train/collapsed"] == 1.0


def test_killed_run_resumes_to_the_same_result(tmp_path, trained):
  reference, _ = trained
  workdir = tmp_path / "killed"
  e2e.kill_after(TINY, workdir, workdir / "checkpoints" / "20")
  out = e2e.run(TINY, workdir)
  assert "Resuming from checkpoint" in out.stdout
  assert e2e.train_losses(workdir) == pytest.approx(e2e.train_losses(reference), rel=1e-6)
  final = lambda w: [r for r in e2e.metrics(w) if "demo_test/rsum" in r][-1]
  assert final(workdir) == pytest.approx(final(reference), rel=1e-6)


def test_one_and_eight_devices_log_the_same_losses(trained, tiny_demo_8dev):
  reference, _ = trained
  one, eight = e2e.train_losses(reference), e2e.train_losses(tiny_demo_8dev)
  assert sorted(one) == sorted(eight)
  for step in one:
    assert abs(one[step] - eight[step]) <= 1e-4 * abs(one[step]), (step, one[step], eight[step])


@pytest.mark.parametrize("args, expected", [
    (["--config=configs/demo.py:variant=nope"], "unknown variant 'nope'"),
    (["--config=configs/missing.py"], "configs/missing.py: no such file"),
    (["--config=configs/demo.py:tiny", "--config.batch_size=30"], "multiple of"),
])
def test_user_errors_exit_nonzero_with_one_message(tmp_path, args, expected):
  import sys
  proc = subprocess.run([sys.executable, "-m", "ditm_jax.main", *args,
                         f"--workdir={tmp_path}"], cwd=e2e.ROOT, env=e2e.env(devices=8),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert expected in proc.stderr
  assert "Traceback" not in proc.stderr


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  proc = e2e.run(TINY, blocker / "sub", check=False)
  assert proc.returncode != 0
  assert "not writable" in proc.stderr and "Traceback" not in proc.stderr
