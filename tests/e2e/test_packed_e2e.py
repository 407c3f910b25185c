"""Packed towers in a sharded train step: 8 CPU devices packing equal one device padded."""
import jax
import numpy as np

from ditm_jax.models import bert
from ditm_jax.models import packed as packed_lib
from tests.unit.models.test_packing import _batch, _dual_encoder


def _sharded_step_worker(out_path):
  """In a process with 8 CPU devices: two train steps of a tiny BERT + region model, packed
  and sharded over 8 devices against padded on one; writes losses and parameters."""
  # pylint: disable=g-import-not-at-top
  import functools
  import json
  from configs import demo
  from ditm_jax import sharding
  from ditm_jax import step as step_lib
  config = demo.get_config("tiny")
  bert_config = bert.BertConfig(vocab_size=102, hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=24,
                                max_position_embeddings=16)
  batches = [_batch(seed=s) for s in range(2)]
  out = {}
  for name, mesh, model in (
      ("padded", None, _dual_encoder(bert_config, packed=False)),
      ("packed", sharding.make_mesh(config), _dual_encoder(bert_config))):
    tx = step_lib.make_optimizer(config)
    init = functools.partial(step_lib.init_state, model, tx, batches[0])
    state = jax.jit(init, out_shardings=None if mesh is None else sharding.replicated(mesh))(
        jax.random.key(0))
    step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx, config=config,
                                     mesh=mesh))
    losses = []
    for batch in batches:
      if mesh is not None:
        batch = sharding.global_batch(sharding.batch_sharding(mesh), batch)
      state, metrics = step(state, batch)
      losses.append(float(metrics["train/loss"]))
    out[name] = {"losses": losses, "devices": 1 if mesh is None else mesh.devices.size,
                 "params": [np.asarray(x).tolist() for x in jax.tree.leaves(state.params)]}
  packs = jax.jit(lambda b: packed_lib.select_packing(
      _dual_encoder(bert_config), lambda m: m.text_tower.pack, b, 8))(batches[1])
  out["packed"]["took_packed_branch"] = bool(packs)
  with open(out_path, "w") as f:
    json.dump(out, f)


def test_packed_train_step_on_8_devices_equals_padded_on_one(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests import e2e_util as e2e  # pylint: disable=g-import-not-at-top
  out = tmp_path / "out.json"
  code = (f"from tests.e2e.test_packed_e2e import _sharded_step_worker; "
          f"_sharded_step_worker({str(out)!r})")
  proc = subprocess.run([sys.executable, "-c", code], cwd=e2e.ROOT, env=e2e.env(devices=8),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  padded, packed = result["padded"], result["packed"]
  assert packed["devices"] == 8 and packed["took_packed_branch"]
  np.testing.assert_allclose(packed["losses"], padded["losses"], rtol=1e-5)
  for a, b in zip(packed["params"], padded["params"]):
    np.testing.assert_allclose(a, b, atol=1e-5)
