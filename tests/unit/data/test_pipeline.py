"""The sampling plan and the in-memory source: (seed, step) determinism, hosts, epochs, masks."""

import ml_collections
import numpy as np
import tensorflow as tf

from ditm_jax.data import memory
from ditm_jax.data import plan


def _split(n=10, c=5, r=6, f=3, l=7):
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, l + 1, n * c).astype(np.int32)
  tokens = np.where(np.arange(l)[None] < lengths[:, None], rng.integers(2, 50, (n * c, l)), 0)
  return memory.Split(features=rng.standard_normal((n, r, f)).astype(np.float32),
                      tokens=tokens.astype(np.int32), lengths=lengths,
                      desc=rng.random(n * c).astype(np.float32),
                      image_ids=np.arange(100, 100 + n), captions=[f"c{i}" for i in range(n * c)],
                      captions_per_image=c)


def _config(b=4, k=2, steps=12, drop=0.0):
  c = ml_collections.ConfigDict()
  c.seed, c.batch_size, c.total_steps = 3, b, steps
  c.data = ml_collections.ConfigDict(dict(captions_per_image=k, max_tokens=5, region_drop=drop,
                                          prefetch=1))
  return c


def test_sample_is_a_permutation_per_epoch_and_k_distinct_captions():
  seen = np.concatenate([memory.sample(0, s, 10, 5, 5, 2)[0] for s in range(2)])
  assert sorted(seen) == list(range(10))  # one epoch = every image once
  _, slots = memory.sample(0, 7, 10, 5, 5, 3)
  assert slots.shape == (5, 3)
  assert all(len(set(row)) == 3 for row in slots)
  # Deterministic, and different steps differ.
  a, b = memory.sample(0, 7, 10, 5, 5, 3), memory.sample(0, 7, 10, 5, 5, 3)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(memory.sample(0, 8, 10, 5, 5, 3)[1], a[1])


def test_batch_is_image_major_and_consistent():
  split = _split()
  images, slots = memory.sample(1, 0, 10, 4, 5, 2)
  keep = memory.region_keep_mask(1, 0, 4, 6, 0.0)
  batch = memory.make_batch(split, images, slots, keep, max_tokens=5)
  assert batch["tokens"].shape == (8, 5)
  for n in range(8):
    cap = images[n // 2] * 5 + slots[n // 2, n % 2]  # caption n belongs to image n // K
    assert batch["desc"][n] == split.desc[cap]
    np.testing.assert_array_equal(batch["tokens"][n], split.tokens[cap, :5])
    assert batch["token_mask"][n].sum() == min(split.lengths[cap], 5)
  np.testing.assert_array_equal(batch["image_ids"], split.image_ids[images])


def test_region_drop_rate_and_never_empty():
  keep = memory.region_keep_mask(0, 5, 2000, 36, 0.2)
  assert abs(1 - keep.mean() - 0.2) < 0.01
  assert keep.any(axis=1).all()
  assert memory.region_keep_mask(0, 5, 3, 4, 0.99).any(axis=1).all()


def test_resumed_dataset_matches_and_hosts_partition_the_batch():
  split, config = _split(), _config(drop=0.3)
  full = list(memory.train_dataset(split, config, 0).as_numpy_iterator())
  resumed = list(memory.train_dataset(split, config, 5).as_numpy_iterator())
  assert len(full) == 12 and len(resumed) == 7
  for a, b in zip(full[5:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  halves = [list(memory.train_dataset(split, config, 0, p, 2).as_numpy_iterator())
            for p in range(2)]
  for step in range(12):
    for key in full[step]:
      joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
      np.testing.assert_array_equal(joined, full[step][key])


def test_training_stream_runs_without_the_autotuning_thread():
  # Its sleeping thread held up the destruction of a finished iterator (tfdata.untuned).
  ds = memory.train_dataset(_split(), _config(), 0)
  assert ds.options().autotune.enabled is False


def test_region_keep_is_the_rule_on_numpy_and_tensorflow():
  """Drop where u < rate; an image whose regions all drop keeps region 0 (brute force)."""
  u = np.random.default_rng(0).random((300, 4)).astype(np.float32)
  u[:5] = 0.0  # every region drops
  for rate in (0.0, 0.3, 0.9):
    want = np.empty(u.shape, bool)
    for b, row in enumerate(u):
      dropped = [x < rate for x in row]
      want[b] = [not d for d in dropped]
      if all(dropped):
        want[b, 0] = True
    np.testing.assert_array_equal(plan.region_keep(u, rate), want)
    np.testing.assert_array_equal(plan.region_keep(tf.constant(u), rate).numpy(), want)


def test_caption_slots_are_the_largest_keys_on_numpy_and_tensorflow():
  keys = np.random.default_rng(1).random((50, 5))
  want = [sorted(range(5), key=lambda j, row=row: -row[j])[:3] for row in keys]
  np.testing.assert_array_equal(plan.caption_slots(keys, 3), want)
  np.testing.assert_array_equal(plan.caption_slots(tf.constant(keys), 3).numpy(), want)


def test_epoch_offset_and_host_shares():
  epoch, within = plan.epoch_offset(plan.first_row(3, 4) + np.arange(4), 10)
  np.testing.assert_array_equal(epoch, [1, 1, 1, 1])
  np.testing.assert_array_equal(within, [2, 3, 4, 5])
  assert plan.epoch_offset(plan.first_row(2, 4), 10) == (0, 8)
  assert plan.host_rows(8, 1, 2) == slice(4, 8) and plan.rows_per_host(8, 2) == 4
  assert plan.host_shards(list("abcde"), 1, 2) == ["b", "d"]
