"""The study command (ditm_jax.study): aggregation by hand, and the real command end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ditm_jax import study
from tests import e2e_util as e2e


def fake_run(workdir, rsum, ndcg, gap):
  """A run's metrics.jsonl: two train lines, a dev and a test evaluation, a torn last line."""
  os.makedirs(workdir)
  rows = [{"step": 10, "train/loss": 5.0, "train/collapsed": 0.0},
          {"step": 20, "train/loss": 4.0, "train/collapsed": float(gap < 0.01)},
          {"step": 20, "dev/rsum": 1.0, "dev/i2t_r1": 1.0,
           "test/rsum": rsum, "test/i2t_r1": rsum / 6, "test/i2t_ndcg10": ndcg}]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 30, "tra')


def test_aggregate_table_and_figure(tmp_path):
  values = {("a", 0): (300.0, 0.5, 0.2), ("a", 1): (310.0, 0.7, 0.2),
            ("a", 2): (320.0, 0.6, 0.2), ("b", 0): (100.0, 0.1, 0.0),
            ("b", 1): (110.0, 0.2, 0.3), ("b", 2): (90.0, 0.3, 0.0)}
  for (v, s), x in values.items():
    fake_run(study.run_dir(str(tmp_path), v, s), *x)
  args = study.parse(["--config=configs/demo.py", "--variants=a,b", "--seeds=3",
                      f"--workdir={tmp_path}"])
  results, eval_name = study.aggregate(args)
  assert eval_name == "test"  # the one with graded metrics, not dev
  a, b = results["a"], results["b"]
  assert a["mean"]["rsum"] == pytest.approx(310.0) and a["std"]["rsum"] == pytest.approx(10.0)
  assert b["mean"]["i2t_ndcg10"] == pytest.approx(0.2)
  assert b["std"]["i2t_ndcg10"] == pytest.approx(np.std([0.1, 0.2, 0.3], ddof=1))
  assert (a["collapsed"], b["collapsed"]) == (0, 2)
  text = study.table(results, 3)
  assert "| `a` | 51.7 ± 1.7 | 310.0 ± 10.0 | 0.600 ± 0.100 | 0/3 |" in text
  assert "| `b` |" in text and "| 2/3 |" in text
  fig = study.figure(results, "title")
  path = tmp_path / "study.png"
  fig.savefig(path)
  assert path.read_bytes()[:4] == b"\x89PNG"
  args.eval = "dev"
  results, _ = study.aggregate(args)
  assert results["a"]["mean"] == {"i2t_r1": 1.0, "rsum": 1.0}


def test_a_damaged_metrics_line_is_one_error(tmp_path):
  workdir = study.run_dir(str(tmp_path), "a", 0)
  fake_run(workdir, 300.0, 0.5, 0.2)
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    lines = f.read().split("\n")
  lines[1] = lines[1][:20]  # damaged in the middle: not a torn last line
  with open(path, "w") as f:
    f.write("\n".join(lines))
  with pytest.raises(study.StudyError, match=f"{path}: line 2 is not JSON"):
    study.read_run(workdir)


@pytest.mark.parametrize("argv, message", [
    (["--config=configs/demo.py:variant=ditm", "--variants=ditm"], "names a variant"),
    (["--config=configs/demo.py", "--variants=ditm", "--config.seed=3"], "--config.seed"),
    (["--config=configs/demo.py", "--variants=ditm", "--steps=3"], "unrecognized"),
])
def test_bad_arguments(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    study.parse(argv + ["--workdir=x"])
  assert e.value.code == 2 and message in capsys.readouterr().err


def test_study_end_to_end_on_the_second_world_and_reuse(tmp_path):
  """Two seeds on a small second world (prepared like COCO) through the real commands: the
  table has the graded metrics from its truth; a rerun reuses both runs."""
  from ditm_jax.data import street  # pylint: disable=g-import-not-at-top
  street.write(str(tmp_path / "raw"), num_train=64, num_dev=8, num_test=16, feature_dim=16)
  config = "configs/coco.py:text=bigru,tiny"
  prepare = subprocess.run(
      [sys.executable, "-m", "ditm_jax.main", f"--config={config}", "--mode=prepare",
       f"--config.data.raw_dir={tmp_path / 'raw'}", f"--config.data.dir={tmp_path / 'data'}",
       "--config.data.feature_dim=16"], cwd=e2e.ROOT, env=e2e.env(), capture_output=True,
      text=True, timeout=300)
  assert prepare.returncode == 0, prepare.stderr[-2000:]
  root = tmp_path / "study"
  cmd = [sys.executable, "-m", "ditm_jax.study", f"--config={config}",
         "--variants=ditm", "--seeds=2", f"--workdir={root}",
         f"--config.data.dir={tmp_path / 'data'}", "--config.data.feature_dim=16",
         "--config.batch_size=16", "--config.total_steps=10", "--config.log_every_steps=5",
         "--config.checkpoint_every_steps=10"]
  first = subprocess.run(cmd, cwd=e2e.ROOT, env=e2e.env(), capture_output=True, text=True,
                         timeout=600)
  assert first.returncode == 0, first.stderr[-2000:]
  table = first.stdout[first.stdout.index("| variant"):].split("\n\nWrote")[0]
  assert "Evaluation `testall`" in first.stdout
  assert "| i2t nDCG@10 | t2i nDCG@10 | order τ | grade τ | collapsed |" in table
  assert "| `ditm` |" in table and "| 0/2 |" in table
  for seed in (0, 1):
    with open(root / "ditm" / f"seed{seed}" / "config.json") as f:
      config_json = json.load(f)
    assert (config_json["seed"], config_json["total_steps"], config_json["variant"]) == (
        seed, 10, "ditm")
  saved = json.loads((root / "study.json").read_text())
  runs = saved["variants"]["ditm"]["runs"]
  rsums = [runs[s]["rsum"] for s in ("0", "1")]
  assert saved["variants"]["ditm"]["mean"]["rsum"] == pytest.approx(np.mean(rsums))
  assert rsums[0] != rsums[1]  # seeds differ
  assert 0 <= runs["0"]["i2t_ndcg10"] <= 1 and -1 <= runs["0"]["grade_tau"] <= 1
  assert (root / "study.png").read_bytes()[:4] == b"\x89PNG"
  assert "Command: `python -m ditm_jax.study" in (root / "study.md").read_text()
  again = subprocess.run(cmd, cwd=e2e.ROOT, env=e2e.env(), capture_output=True, text=True,
                         timeout=120)
  assert again.returncode == 0, again.stderr[-2000:]
  assert again.stdout.count("finished before, reused") == 2
  assert table in again.stdout
  other = subprocess.run(cmd[:-1] + ["--config.checkpoint_every_steps=5"], cwd=e2e.ROOT,
                         env=e2e.env(), capture_output=True, text=True, timeout=120)
  assert other.returncode == 1, other.stderr[-2000:]
  assert "holds a finished run with other settings (checkpoint_every_steps=10 there, 5 now)" \
      in other.stderr
