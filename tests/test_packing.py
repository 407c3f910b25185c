"""Token packing (transformer.Packing): the BERT tower on its valid tokens only."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ditm_jax.models import bert
from ditm_jax.models import encoders
from ditm_jax.models import model as model_lib
from ditm_jax.models import tokenizer
from ditm_jax.models import transformer

BERT_DIR = pathlib.Path(__file__).resolve().parent / "golden" / "bert_tiny"
TEXTS = ["A man riding a horse.", "Two dogs on the street", "a red car",
         "The cat sits on a table near the window", "people", "a very small bird sitting on "
         "a branch of a tree in the rain"]


def _mask(seed=0, shape=(5, 7)):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(0, shape[1] + 1, shape[0])
  return np.arange(shape[1])[None] < lengths[:, None]


def test_capacity_rounds_up_to_eight_and_caps_at_all_positions():
  assert transformer.packing_capacity((4, 10), 0.5) == 24  # 20 -> 24
  assert transformer.packing_capacity((4, 10), 0.6) == 24
  assert transformer.packing_capacity((4, 10), 0.61) == 32  # 24.4 -> 32
  assert transformer.packing_capacity((4, 10), 0.99) == 40  # never past B x L
  assert transformer.packing_capacity((4, 10), 0.0) == 0


def test_pack_and_unpack_move_the_valid_rows_as_numpy_does():
  mask = _mask()
  x = np.random.default_rng(1).standard_normal(mask.shape + (3,)).astype(np.float32)
  n = int(mask.sum())
  packing, fits = jax.jit(transformer.plan_packing, static_argnums=1)(mask, n + 5)
  assert bool(fits)
  rows = np.asarray(packing.pack(jnp.asarray(x)))
  np.testing.assert_array_equal(rows[:n], x[mask])  # row-major order of the valid tokens
  np.testing.assert_array_equal(rows[n:], 0)
  back = np.asarray(packing.unpack(jnp.asarray(rows), *mask.shape))
  np.testing.assert_array_equal(back, np.where(mask[..., None], x, 0))
  # Too small a buffer: reported, so the caller takes the padded path.
  assert not bool(transformer.plan_packing(jnp.asarray(mask), n - 1)[1])


def test_gradients_of_pack_and_unpack_are_the_inverse_moves():
  mask = _mask(seed=2)
  n = int(mask.sum())
  packing, _ = transformer.plan_packing(jnp.asarray(mask), n + 3)
  rng = np.random.default_rng(3)
  cot_rows = rng.standard_normal((n + 3, 2)).astype(np.float32)
  x = jnp.zeros(mask.shape + (2,))
  grad_x = jax.grad(lambda x: jnp.sum(packing.pack(x) * cot_rows))(x)
  want = np.zeros(mask.shape + (2,), np.float32)
  want[mask] = cot_rows[:n]  # each valid token receives its row's cotangent; padding none
  np.testing.assert_array_equal(grad_x, want)
  cot_x = rng.standard_normal(mask.shape + (2,)).astype(np.float32)
  grad_rows = jax.grad(lambda r: jnp.sum(packing.unpack(r, *mask.shape) * cot_x))(
      jnp.zeros((n + 3, 2)))
  want_rows = np.zeros((n + 3, 2), np.float32)
  want_rows[:n] = cot_x[mask]  # empty rows feed nothing
  np.testing.assert_array_equal(grad_rows, want_rows)


@pytest.fixture(scope="module")
def bert_tower_inputs():
  module, bert_params = bert.load_pretrained(BERT_DIR)
  ids, lengths = tokenizer.load_tokenizer(BERT_DIR, 16).ids_and_lengths(TEXTS)
  mask = np.arange(16)[None] < np.minimum(lengths, 16)[:, None]
  padded = encoders.BertTextEncoder(module.config, embed_dim=24)
  params = jax.jit(padded.init)(jax.random.key(0), ids, mask)["params"]
  params = model_lib.merge_pretrained(params, {("bert",): bert_params})
  return module.config, params, jnp.asarray(ids), jnp.asarray(mask)


def _value_and_grad(tower, params, ids, mask):
  weights = jnp.arange(24.0) / 24
  return jax.jit(jax.value_and_grad(
      lambda p: jnp.sum(tower.apply({"params": p}, ids, mask) * weights)))(params)


@pytest.mark.parametrize("capacity", [0.75, 0.2])  # 0.2 cannot hold them: the padded path
def test_packed_bert_tower_equals_the_padded_one(bert_tower_inputs, capacity):
  config, params, ids, mask = bert_tower_inputs
  assert 0.2 * mask.size < int(mask.sum()) <= 0.75 * mask.size
  padded = encoders.BertTextEncoder(config, embed_dim=24)
  packed = encoders.BertTextEncoder(config, embed_dim=24, token_capacity=capacity)
  want = jax.jit(padded.apply)({"params": params}, ids, mask)
  got = jax.jit(packed.apply)({"params": params}, ids, mask)
  np.testing.assert_allclose(got, want, atol=2e-6)
  (loss_want, grad_want), (loss_got, grad_got) = (
      _value_and_grad(t, params, ids, mask) for t in (padded, packed))
  np.testing.assert_allclose(loss_got, loss_want, rtol=1e-6)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad_want))
  for path, g_want in jax.tree_util.tree_flatten_with_path(grad_want)[0]:
    g_got = grad_got
    for key in path:
      g_got = g_got[key.key]
    np.testing.assert_allclose(g_got, g_want, atol=1e-5 * scale,
                               err_msg=jax.tree_util.keystr(path))
  # The padded positions' token ids change nothing either way.
  other_ids = jnp.where(mask, ids, 7)
  np.testing.assert_allclose(jax.jit(packed.apply)({"params": params}, other_ids, mask), got,
                             atol=1e-6)


def test_build_reads_text_token_capacity():
  from configs import demo  # pylint: disable=g-import-not-at-top
  c = demo.get_config("tiny")
  c.model.text, c.model.bert_path, c.data.max_tokens = "bert", str(BERT_DIR), 16
  assert model_lib.build(c, vocab_size=10).text_tower.token_capacity == 0.75
  c.model.text_token_capacity = 0.0
  assert model_lib.build(c, vocab_size=10).text_tower.token_capacity == 0.0
