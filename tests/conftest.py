"""Test setup: quiet TensorFlow, keep it off accelerators, locate ../shared/data.

Session fixtures that train (the tiny demo on 1 and on 8 devices) are built once per test run,
not once per pytest-xdist worker: the first worker to need one trains it under a file lock in
the run's shared temporary directory, the others wait for it and read the same workdir.
"""
import fcntl
import json
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Tests are compile-bound: compile with fewer LLVM passes (about half the compile time).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
  # One persistent JAX compilation cache for every worker's subprocesses (e2e_util.env): set
  # in the controlling process before the workers start, removed when it ends.
  if not hasattr(config, "workerinput") and "DITM_TEST_JAX_CACHE" not in os.environ:
    os.environ["DITM_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="ditm_test_jax_cache_")
    config.add_cleanup(lambda: shutil.rmtree(os.environ.pop("DITM_TEST_JAX_CACHE"),
                                             ignore_errors=True))


def _once(tmp_path_factory, name, build):
  """(workdir, `build(workdir)`'s JSON-able result), built once per test run across workers."""
  root = tmp_path_factory.getbasetemp()
  if "PYTEST_XDIST_WORKER" in os.environ:
    root = root.parent  # shared by the workers of this run
  workdir, done = root / name, root / f"{name}.json"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      shutil.rmtree(workdir, ignore_errors=True)  # a build that failed in another worker
      workdir.mkdir()
      result = build(workdir)
      done.write_text(json.dumps(result))
  return workdir, json.loads(done.read_text())


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
  """(workdir, stdout) of `configs/demo.py:tiny` trained once per test run on one device.

  Trained through a relative --workdir, as in the README (Orbax itself needs absolute paths).
  Tests that write into the run (eval, export) work on a copy: other workers read it too.
  """
  from tests import e2e_util as e2e  # pylint: disable=g-import-not-at-top
  build = lambda w: e2e.run("configs/demo.py:tiny", os.path.relpath(w, e2e.ROOT)).stdout
  return _once(tmp_path_factory, "tiny_demo", build)


@pytest.fixture(scope="session")
def tiny_demo_8dev(tmp_path_factory):
  """The workdir of `configs/demo.py:tiny` trained once per test run on 8 CPU devices."""
  from tests import e2e_util as e2e  # pylint: disable=g-import-not-at-top
  build = lambda w: e2e.run("configs/demo.py:tiny", w, devices=8).stdout
  return _once(tmp_path_factory, "tiny_demo_8dev", build)[0]


@pytest.fixture
def shared_data():
  """The real annotation files in ../shared/data; skips with a message where absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} not present (real annotation files live beside the checkout)")
  return SHARED_DATA
