"""Prepared precomputed-layout data through `python -m ditm_jax.main`: train, then a run killed
after its first checkpoint resumes to the same losses and metrics. The runs share a JAX
compilation cache, so only the first compiles."""


import pytest

from ditm_jax.data import prepare
from tests import conftest
from tests import e2e_util as e2e
from tests import real_data_util as rd

CONFIG = "configs/coco.py:text=bigru,tiny"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  if not conftest.SHARED_DATA.is_dir():
    pytest.skip(f"{conftest.SHARED_DATA} not present (real annotation files live beside the "
                "checkout)")
  tmp = tmp_path_factory.mktemp("real")
  caps, ids = rd.shared_captions(conftest.SHARED_DATA, "coco", "testall")
  raw = rd.write_precomp(tmp / "raw", {"train": (caps[:600], ids[:600]),
                                       "testall": (caps[600:800], ids[600:800])},
                         feature_dim=32)
  config = rd.config("coco", "tiny", raw_dir=str(raw), dir=str(tmp / "prepared"),
                     feature_dim=32, splits="train,testall")
  prepare.prepare(config)
  flags = [f"--config.data.dir={tmp / 'prepared'}", "--config.data.feature_dim=32",
           "--config.data.splits=train,testall",
           "--config.total_steps=20", "--config.checkpoint_every_steps=10",
           "--config.eval_every_steps=20"]
  env = dict(JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  reference = tmp / "reference"
  proc = e2e.run(CONFIG, reference, *flags, **env)
  return flags, env, reference, proc


def _final(workdir):
  return [r for r in e2e.metrics(workdir) if "testall/rsum" in r][-1]


def test_prepared_data_trains_and_evaluates(setup):
  _, _, reference, proc = setup
  losses = e2e.train_losses(reference)
  assert sorted(losses) == [10, 20]
  final = _final(reference)
  assert final["step"] == 20
  recalls = [final[f"testall/{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
  assert final["testall/rsum"] == pytest.approx(sum(recalls))
  assert "| testall |" in proc.stdout


def test_killed_run_resumes_to_the_same_result(setup, tmp_path):
  flags, env, reference, _ = setup
  workdir = tmp_path / "killed"
  e2e.kill_after(CONFIG, workdir, workdir / "checkpoints" / "10", *flags, **env)
  out = e2e.run(CONFIG, workdir, *flags, **env)
  assert "Resuming from checkpoint" in out.stdout
  assert e2e.train_losses(workdir) == pytest.approx(e2e.train_losses(reference), rel=1e-6)
  assert _final(workdir) == pytest.approx(_final(reference), rel=1e-6)
