"""FSDP (config.mesh.fsdp): sharded parameters and optimizer state train like replicated ones.

A subprocess with 8 CPU devices runs three train steps of the tiny demo twice, with
replicated and with FSDP state, on the same batches, and reports losses, parameters and the
layout of the state.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests import e2e_util as e2e
from ditm_jax import sharding

STEPS = 3


def _worker(out_path, workdir):
  """Runs in a process with 8 CPU devices; writes losses, params and specs to `out_path`."""
  # pylint: disable=g-import-not-at-top
  import jax
  from configs import demo
  from ditm_jax import train

  out = {}
  for fsdp in (False, True):
    config = demo.get_config("tiny")
    config.mesh.fsdp = fsdp
    config.mesh.fsdp_min_size = 1024
    trainer = train.Trainer(config, f"{workdir}/{fsdp}")
    state = trainer.initial_state()
    setup = trainer.setup
    losses = []
    for _, local in zip(range(STEPS), trainer.data.train.batches(config, 0)):
      state, metrics = setup.step(state, sharding.global_batch(setup.batch_sharding, local))
      losses.append(float(metrics["train/loss"]))
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    out[str(fsdp)] = {
        "losses": losses,
        "leaves": {jax.tree_util.keystr(k): np.asarray(jax.device_get(v)).tolist()
                   for k, v in flat},
        "specs": {jax.tree_util.keystr(k): str(v.sharding.spec) for k, v in flat},
        "shapes": {jax.tree_util.keystr(k): list(v.shape) for k, v in flat},
    }
  with open(out_path, "w") as f:
    json.dump(out, f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("fsdp")
  code = (f"from tests.e2e.test_fsdp import _worker; "
          f"_worker({str(tmp / 'out.json')!r}, {str(tmp)!r})")
  proc = subprocess.run([sys.executable, "-c", code], cwd=e2e.ROOT, env=e2e.env(devices=8),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp / "out.json") as f:
    out = json.load(f)
  return out["False"], out["True"]


def test_fsdp_shards_large_arrays_and_optimizer_state_follows(runs):
  replicated, fsdp = runs
  assert not any("data" in spec for spec in replicated["specs"].values())
  specs, shapes = fsdp["specs"], fsdp["shapes"]
  params = {k for k in specs if k.startswith(".params") and "data" in specs[k]}
  assert params, "no parameter was sharded"
  for key, spec in specs.items():  # exactly the large arrays with a divisible dimension
    large = np.prod(shapes[key]) >= 1024 and any(n % 8 == 0 for n in shapes[key])
    assert ("data" in spec) == large, (key, spec, shapes[key])
  for key in params:  # Adam's two moments are laid out like their parameter
    moments = [k for k in specs if k.startswith(".opt_state") and shapes[k] == shapes[key]]
    assert len(moments) >= 2 and all(specs[k] == specs[key] for k in moments), key


def test_fsdp_trains_like_replicated(runs):
  replicated, fsdp = runs
  np.testing.assert_allclose(fsdp["losses"], replicated["losses"], rtol=1e-5)
  assert set(fsdp["leaves"]) == set(replicated["leaves"])
  for key, value in replicated["leaves"].items():
    np.testing.assert_allclose(fsdp["leaves"][key], value, rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("shape, devices, min_size, expected", [
    ((64, 256), 8, 1024, (None, "data")),  # largest divisible dimension
    ((256, 64), 8, 1024, ("data",)),
    ((128, 128), 8, 1024, ("data",)),  # ties: the first
    ((63, 100), 8, 1024, ()),  # nothing divisible
    ((30, 64), 8, 1024, (None, "data")),
    ((16, 16), 8, 1024, ()),  # small
    ((4096,), 1, 1024, ()),  # one device
])
def test_fsdp_spec(shape, devices, min_size, expected):
  assert tuple(sharding.fsdp_spec(shape, devices, min_size)) == expected
