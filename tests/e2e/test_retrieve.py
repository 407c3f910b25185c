"""End to end on the session's tiny demo run (40 steps; evaluated and saved at 20 and 40):
--mode=eval (with --step), --mode=export, plots, and `python -m ditm_jax.retrieve` for text
and image queries and user errors."""

import json
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from ditm_jax import retrieve
from ditm_jax.evaluation import export
from tests import e2e_util as e2e

TINY = "configs/demo.py:tiny"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workdir(tiny_demo, tmp_path_factory):
  path = tmp_path_factory.mktemp("retrieve") / "demo"
  shutil.copytree(tiny_demo[0], path)  # this module deletes plots and exports
  return path


def _eval_line(workdir, step):
  return next(r for r in e2e.metrics(workdir) if r["step"] == step and "demo_test/rsum" in r)


def test_training_writes_config_export_and_plots(workdir):
  config = json.loads((workdir / "config.json").read_text())
  assert config["total_steps"] == 40 and config["evals"]["export"]["type"] == "export"
  meta = json.loads((workdir / "export" / "test_export.json").read_text())
  assert meta["step"] == 40 and meta["num_images"] == 100 and meta["num_captions"] == 500
  for name in ("training_curves.png", "retrieval_examples.png"):
    assert (workdir / "plots" / name).read_bytes()[:8] == PNG, name


def test_eval_mode_at_a_named_step(workdir):
  for png in (workdir / "plots").iterdir():
    png.unlink()
  e2e.run(TINY, workdir, "--step=20", mode="eval")
  results = json.loads((workdir / "eval_results.json").read_text())
  assert results["step"] == 20
  logged = _eval_line(workdir, 20)
  assert logged != _eval_line(workdir, 40)
  for key in ("demo_test/rsum", "demo_test/i2t_r1", "demo_test/t2i_ndcg10", "demo_test/order_tau"):
    assert results[key] == pytest.approx(logged[key], rel=1e-5), key
  assert "| this run | demo_test |" in (workdir / "eval_results.md").read_text()
  for name in ("training_curves.png", "retrieval_examples.png"):
    assert (workdir / "plots" / name).read_bytes()[:8] == PNG, name


def test_export_mode_writes_embeddings_and_sidecar(workdir):
  before = np.load(workdir / "export" / "test_images.npy")
  shutil.rmtree(workdir / "export")
  e2e.run(TINY, workdir, mode="export")
  out = export.load(str(workdir / "export"), "test")
  np.testing.assert_allclose(out.images, before, atol=1e-6)
  assert out.images.shape == (100, 64) and out.captions.shape == (500, 64)
  np.testing.assert_allclose(np.linalg.norm(out.captions, axis=1), 1, atol=1e-5)
  assert out.meta["step"] == 40
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  assert out.meta["config_hash"] == export.config_hash(config)
  assert out.meta["text_preprocessing"].startswith("bigru word vocab (")
  assert "max_tokens 32" in out.meta["text_preprocessing"]


def _rows(stdout):
  """(id, score) of each result line of the retrieve output."""
  rows = [l.replace("*", " ").split() for l in stdout.splitlines()[2:]]
  return [int(r[1]) for r in rows], np.array([float(r[2]) for r in rows])


def test_text_query_is_embedded_by_the_trained_model(workdir):
  out = export.load(str(workdir / "export"), "test")
  k = 37  # an exported caption: the query's embedding must be that caption's
  # A relative --workdir, as in the README (Orbax itself needs absolute paths).
  proc = subprocess.run([sys.executable, "-m", "ditm_jax.retrieve",
                         f"--workdir={workdir.name}", "--query", out.texts[k], "--top_k", "4"],
                        cwd=workdir.parent, env=e2e.env(), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith(f'Query "{out.texts[k]}": top 4 of 100 images (test export, '
                                "step 40)")
  ids, scores = _rows(proc.stdout)
  want = out.images @ out.captions[k]
  order = np.argsort(-want, kind="stable")[:4]
  np.testing.assert_allclose(scores, want[order], atol=2e-4)
  assert ids == out.image_ids[order].tolist()


def test_image_query_uses_the_exported_captions(workdir, capsys):
  out = export.load(str(workdir / "export"), "test")
  image_id = int(out.image_ids[5])
  assert retrieve.main([f"--workdir={workdir}", "--image_id", str(image_id), "--top_k", "6"]) == 0
  stdout = capsys.readouterr().out
  ids, scores = _rows(stdout)
  want = out.captions @ out.images[5]
  order = np.argsort(-want, kind="stable")[:6]
  np.testing.assert_allclose(scores, want[order], atol=1e-4)
  assert ids == out.caption_image_ids[order].tolist()
  for line, c in zip(stdout.splitlines()[2:], order):
    assert line.endswith(out.texts[c])
    assert ("*" in line.split()[1]) == (out.caption_image_ids[c] == image_id)


def test_retrieve_user_errors(workdir, tmp_path, capsys):
  exported = export.load(str(workdir / "export"), "test").image_ids
  missing = next(i for i in range(10**6) if i not in set(exported.tolist()))
  cases = [
      ([f"--workdir={tmp_path}", "--query", "a cube"], "no export in"),
      ([f"--workdir={workdir}", "--image_id", str(missing)],
       f"image id {missing} is not in the test export"),
      ([f"--workdir={workdir}", "--query", "  "], "--query is empty"),
      ([f"--workdir={workdir}", "--query", "a cube", "--split", "train"],
       "no export of split 'train'"),
      ([f"--workdir={workdir}", "--image_id", str(exported[0]), "--top_k", "0"],
       "--top_k must be"),
      ([f"--workdir={workdir}"], "one of the arguments --query --image_id is required"),
  ]
  for argv, message in cases:
    assert retrieve.main(argv) == 1, argv
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
  stale = tmp_path / "stale"
  shutil.copytree(workdir, stale)
  sidecar = stale / "export" / "test_export.json"
  meta = json.loads(sidecar.read_text())
  sidecar.write_text(json.dumps({**meta, "step": 5}))
  assert retrieve.main([f"--workdir={stale}", "--query", "a red cube"]) == 1
  assert "step 5, whose checkpoint is no longer" in capsys.readouterr().err


def test_eval_of_a_missing_step_names_the_checkpoints(workdir):
  from ditm_jax import train  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  with pytest.raises(train.UserError, match=r"no checkpoint of step 5 .*have \[20, 40\]"):
    train.run(config, str(workdir), "eval", step=5)
  with pytest.raises(train.UserError, match="--step applies to"):
    train.run(config, str(workdir), "train", step=5)
