"""Packing (models/packing.py, models/packed.py): the row moves, buffer sizes, which towers
pack and when. The packed towers' equality with the plain ones: tests/e2e/test_packed_e2e.py."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ditm_jax.models import bert
from ditm_jax.models import encoders
from ditm_jax.models import model as model_lib
from ditm_jax.models import packed as packed_lib
from ditm_jax.models import packing

BERT_DIR = pathlib.Path(__file__).resolve().parents[2] / "golden" / "bert_tiny"
TEXTS = ["A man riding a horse.", "Two dogs on the street", "a red car",
         "The cat sits on a table near the window", "people", "a very small bird sitting on "
         "a branch of a tree in the rain"]


def _mask(seed=0, shape=(5, 7)):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(0, shape[1] + 1, shape[0])
  return np.arange(shape[1])[None] < lengths[:, None]


def test_capacity_rounds_up_to_eight_and_caps_at_all_positions():
  assert packing.capacity((4, 10), 0.5) == 24  # 20 -> 24
  assert packing.capacity((4, 10), 0.6) == 24
  assert packing.capacity((4, 10), 0.61) == 32  # 24.4 -> 32
  assert packing.capacity((4, 10), 0.99) == 40  # never past B x L
  assert packing.capacity((4, 10), 0.0) == 0


def test_pack_and_unpack_move_the_valid_rows_as_numpy_does():
  mask = _mask()
  x = np.random.default_rng(1).standard_normal(mask.shape + (3,)).astype(np.float32)
  n = int(mask.sum())
  moves, fits = jax.jit(packing.plan, static_argnums=1)(mask, n + 5)
  assert bool(fits)
  rows = np.asarray(moves.pack(jnp.asarray(x)))
  np.testing.assert_array_equal(rows[:n], x[mask])  # row-major order of the valid tokens
  np.testing.assert_array_equal(rows[n:], 0)
  back = np.asarray(moves.unpack(jnp.asarray(rows), *mask.shape))
  np.testing.assert_array_equal(back, np.where(mask[..., None], x, 0))
  # Too small a buffer: reported, so the caller takes the padded path.
  assert not bool(packing.plan(jnp.asarray(mask), n - 1)[1])


def test_gradients_of_pack_and_unpack_are_the_inverse_moves():
  mask = _mask(seed=2)
  n = int(mask.sum())
  moves, _ = packing.plan(jnp.asarray(mask), n + 3)
  rng = np.random.default_rng(3)
  cot_rows = rng.standard_normal((n + 3, 2)).astype(np.float32)
  x = jnp.zeros(mask.shape + (2,))
  grad_x = jax.grad(lambda x: jnp.sum(moves.pack(x) * cot_rows))(x)
  want = np.zeros(mask.shape + (2,), np.float32)
  want[mask] = cot_rows[:n]  # each valid token receives its row's cotangent; padding none
  np.testing.assert_array_equal(grad_x, want)
  cot_x = rng.standard_normal(mask.shape + (2,)).astype(np.float32)
  grad_rows = jax.grad(lambda r: jnp.sum(moves.unpack(r, *mask.shape) * cot_x))(
      jnp.zeros((n + 3, 2)))
  want_rows = np.zeros((n + 3, 2), np.float32)
  want_rows[:n] = cot_x[mask]  # empty rows feed nothing
  np.testing.assert_array_equal(grad_rows, want_rows)


def test_build_reads_the_capacities():
  from configs import demo  # pylint: disable=g-import-not-at-top
  c = demo.get_config("tiny")
  c.model.text, c.model.bert_path, c.data.max_tokens = "bert", str(BERT_DIR), 16
  model = model_lib.build(c, vocab_size=10)  # tiny: plain regions, packed BERT at 0.75
  assert type(model.text_tower) is packed_lib.PackedBertTextEncoder
  assert model.text_tower.capacity == 0.75
  assert type(model.image_tower) is encoders.RegionEncoder
  c.model.text_token_capacity, c.model.region_capacity = 0.0, 0.85
  model = model_lib.build(c, vocab_size=10)
  assert type(model.text_tower) is encoders.BertTextEncoder
  assert type(model.image_tower) is packed_lib.PackedRegionEncoder
  assert model.image_tower.capacity == 0.85


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_fits_checks_each_devices_rows_as_numpy_does(shards):
  rng = np.random.default_rng(shards)
  for _ in range(20):
    mask = rng.random((8, 6)) < rng.uniform(0.4, 0.9)
    want = all(block.sum() <= packing.capacity(block.shape, 0.7)
               for block in np.split(mask, shards))
    assert bool(packing.fits(jnp.asarray(mask), 0.7, shards)) == want
  # 32 of 80 positions fit in 0.5 of the batch (40 rows), but not when the first device's
  # 4 rows hold 28 of them (its buffer: 0.5 x 40 = 20, rounded up to 24 rows).
  mask = np.arange(10)[None] < np.array([7, 7, 7, 7, 1, 1, 1, 1])[:, None]
  assert bool(packing.fits(mask, 0.5, 1)) and not bool(packing.fits(mask, 0.5, 2))


def _dual_encoder(bert_config, packed=True):
  if packed:
    return model_lib.DualEncoder(
        image_tower=packed_lib.PackedRegionEncoder(embed_dim=12, mlp_hidden=8, capacity=0.8),
        text_tower=packed_lib.PackedBertTextEncoder(bert_config, embed_dim=12, capacity=0.75))
  return model_lib.DualEncoder(
      image_tower=encoders.RegionEncoder(embed_dim=12, mlp_hidden=8),
      text_tower=encoders.BertTextEncoder(bert_config, embed_dim=12))


def _batch(rows=16, regions_kept=7, token_lengths=(4, 10), seed=0):
  """Regions (rows, 10, 16) with `regions_kept` kept each; 16 tokens, lengths in a range."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(token_lengths[0], token_lengths[1] + 1, rows)
  return {
      "regions": rng.standard_normal((rows, 10, 16)).astype(np.float32),
      "region_mask": np.arange(10)[None] < np.full((rows, 1), regions_kept),
      "tokens": rng.integers(1, 102, (rows, 16)).astype(np.int32),
      "token_mask": np.arange(16)[None] < lengths[:, None],
      "desc": rng.random(rows).astype(np.float32),
      "image_ids": np.arange(rows, dtype=np.int32),
  }


def test_select_packing_packs_only_when_every_device_fits():
  config = bert.BertConfig(vocab_size=102, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=24,
                           max_position_embeddings=16)
  model = _dual_encoder(config)
  which = lambda batch, shards: tuple(np.asarray(jax.jit(
      lambda b: packed_lib.select_packing(
          model, lambda m: jnp.array([m.image_tower.pack, m.text_tower.pack]), b, shards))(
              batch)))
  batch = _batch()  # 7 of 10 regions (buffer 0.8), at most 10 of 16 tokens (0.75)
  assert which(batch, 1) == which(batch, 8) == (True, True)
  assert which(dict(batch, region_mask=np.ones((16, 10), bool)), 1) == (False, False)
  # 12 tokens a caption: the whole batch fits (192 of 192 rows), the first device's
  # two captions with 16 tokens each do not (32 of 24 rows).
  tight = dict(batch, token_mask=np.arange(16)[None] < np.array([16, 16] + [11] * 14)[:, None])
  assert which(tight, 1) == (True, True) and which(tight, 8) == (False, False)
  # Only the masks in the batch count (text embedding alone reads no regions).
  texts = {k: batch[k] for k in ("tokens", "token_mask")}
  assert which(dict(texts), 1) == (True, True)
  # Nothing packs: no cond, the model itself.
  unpacked = _dual_encoder(config, packed=False)
  assert packed_lib.select_packing(unpacked, lambda m: m, batch) is unpacked
