"""Packed towers (models/packed.py) equal the plain towers: values and gradients of BERT on its
valid tokens and of the region tower on kept regions, and a train step on 8 CPU devices packing
against one device padded."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ditm_jax.data import tokenizer
from ditm_jax.models import bert
from ditm_jax.models import encoders
from ditm_jax.models import model as model_lib
from ditm_jax.models import packed as packed_lib
from tests.unit.models.test_packing import BERT_DIR, TEXTS, _batch, _dual_encoder


def _assert_same_value_and_grads(padded, packed, params, *inputs):
  """Packed tower == padded tower: outputs, and every gradient leaf to 1e-5 of the largest."""
  np.testing.assert_allclose(jax.jit(packed.apply)({"params": params}, *inputs),
                             jax.jit(padded.apply)({"params": params}, *inputs), atol=2e-6)
  weights = jnp.arange(packed.embed_dim, dtype=jnp.float32) / packed.embed_dim
  grad = lambda tower: jax.jit(jax.grad(
      lambda p: jnp.sum(tower.apply({"params": p}, *inputs) * weights)))(params)
  want, got = grad(padded), grad(packed)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want))
  jax.tree.map_with_path(lambda path, a, b: np.testing.assert_allclose(
      a, b, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path)), got, want)


@pytest.fixture(scope="module")
def bert_tower_inputs():
  module, bert_params = bert.load_pretrained(BERT_DIR)
  ids, lengths = tokenizer.load_tokenizer(BERT_DIR, 16).ids_and_lengths(TEXTS)
  mask = np.arange(16)[None] < np.minimum(lengths, 16)[:, None]
  padded = encoders.BertTextEncoder(module.config, embed_dim=24)
  params = jax.jit(padded.init)(jax.random.key(0), ids, mask)["params"]
  params = model_lib.merge_pretrained(params, {("bert",): bert_params})
  return module.config, params, jnp.asarray(ids), jnp.asarray(mask)


@pytest.mark.parametrize("capacity", [0.75, 0.2])  # 0.2 cannot hold them: the padded path
def test_packed_bert_tower_equals_the_padded_one(bert_tower_inputs, capacity):
  config, params, ids, mask = bert_tower_inputs
  assert 0.2 * mask.size < int(mask.sum()) <= 0.75 * mask.size
  padded = encoders.BertTextEncoder(config, embed_dim=24)
  packed = packed_lib.PackedBertTextEncoder(config, embed_dim=24, capacity=capacity)
  _assert_same_value_and_grads(padded, packed, params, ids, mask)
  # The padded positions' token ids change nothing.
  apply = jax.jit(packed.apply)
  np.testing.assert_allclose(apply({"params": params}, jnp.where(mask, ids, 7), mask),
                             apply({"params": params}, ids, mask), atol=1e-6)


@pytest.mark.parametrize("drop", [0.3, 0.0])  # 0.0 keeps every region: the padded path
def test_region_tower_on_kept_regions_equals_padded(drop):
  rng = np.random.default_rng(5)
  regions = rng.standard_normal((6, 10, 16)).astype(np.float32)
  mask = rng.random((6, 10)) >= drop
  mask[:, 0] = True
  padded = encoders.RegionEncoder(embed_dim=12, mlp_hidden=8)
  packed = packed_lib.PackedRegionEncoder(embed_dim=12, mlp_hidden=8, capacity=0.8)
  params = jax.jit(padded.init)(jax.random.key(1), regions, mask)["params"]
  # The same parameters, by name and shape, whichever layout runs.
  assert jax.tree.map(jnp.shape, jax.jit(packed.init)(jax.random.key(1), regions, mask)[
      "params"]) == jax.tree.map(jnp.shape, params)
  assert (int(mask.sum()) <= 48) == (drop > 0)  # 48 = 0.8 x 60 rows
  _assert_same_value_and_grads(padded, packed, params, regions, mask)
  # Dropped regions' features change nothing.
  other = np.where(mask[..., None], regions, 1e3).astype(np.float32)
  np.testing.assert_allclose(jax.jit(packed.apply)({"params": params}, other, mask),
                             jax.jit(packed.apply)({"params": params}, regions, mask), atol=1e-6)


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
