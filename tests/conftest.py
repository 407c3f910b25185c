"""Test setup: quiet TensorFlow, keep it off accelerators, locate ../shared/data."""
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Tests are compile-bound: compile with fewer LLVM passes (about half the compile time).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
  """(workdir, process) of `configs/demo.py:tiny` trained once per session on one device.

  Trained through a relative --workdir, as in the README (Orbax itself needs absolute paths).
  Tests that write into a run (eval, export) either only add reproducible files or copy it.
  """
  from tests import e2e_util as e2e  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("tiny_demo")
  proc = e2e.run("configs/demo.py:tiny", os.path.relpath(workdir, e2e.ROOT))
  return workdir, proc


@pytest.fixture(scope="session")
def tiny_demo_8dev(tmp_path_factory):
  """The workdir of `configs/demo.py:tiny` trained once per session on 8 CPU devices."""
  from tests import e2e_util as e2e  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("tiny_demo_8dev")
  e2e.run("configs/demo.py:tiny", workdir, devices=8)
  return workdir


@pytest.fixture
def shared_data():
  """The real annotation files in ../shared/data; skips with a message where absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} not present (real annotation files live beside the checkout)")
  return SHARED_DATA
