"""Test setup: quiet TensorFlow, keep it off accelerators, locate ../shared/data."""
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data():
  """The real annotation files in ../shared/data; skips with a message where absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} not present (real annotation files live beside the checkout)")
  return SHARED_DATA
