"""Packing capacities from the data (ditm_jax.data.packing_stats) against brute force."""
import itertools
import math

import ml_collections
import numpy as np
import pytest

from ditm_jax.data import memory
from ditm_jax.data import packing_stats


def _enumerated_sum(pmf, units):
  """P(sum of `units` draws) by listing every outcome."""
  out = np.zeros(units * (len(pmf) - 1) + 1)
  for values in itertools.product(range(len(pmf)), repeat=units):
    out[sum(values)] += math.prod(pmf[v] for v in values)
  return out


def test_sum_pmf_equals_enumeration():
  pmf = np.array([0.0, 0.1, 0.25, 0.4, 0.0, 0.25])
  for units in (1, 2, 5):
    np.testing.assert_allclose(packing_stats.sum_pmf(pmf, units), _enumerated_sum(pmf, units),
                               atol=1e-14)
  # Unnormalised counts give the same distribution.
  np.testing.assert_allclose(packing_stats.sum_pmf(pmf * 40, 3), _enumerated_sum(pmf, 3),
                             atol=1e-14)


@pytest.mark.parametrize("overflow", [0.5, 0.1, 0.01, 1e-3])
def test_rows_for_is_the_smallest_buffer_within_the_overflow(overflow):
  pmf = np.array([0.0, 0.2, 0.3, 0.1, 0.4])
  total = _enumerated_sum(pmf, 6)
  exceeds = [total[c + 1:].sum() for c in range(len(total))]  # P(sum > c)
  want = min(c for c, p in enumerate(exceeds) if p <= overflow)
  assert packing_stats.rows_for(pmf, 6, overflow) == want
  assert exceeds[want - 1] > overflow


def test_rows_for_rejects_an_overflow_outside_zero_one():
  with pytest.raises(ValueError, match="overflow"):
    packing_stats.rows_for(np.ones(3), 2, 0.0)


def test_caption_sum_counts_equal_a_loop_over_images_and_subsets():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 30, (40, 5))
  got = packing_stats.caption_sum_counts(lengths, max_tokens=20)
  assert sorted(got, key=int) == ["1", "2", "3", "4", "5"]
  for k in range(1, 6):
    want = {}
    for row in lengths:
      for subset in itertools.combinations(range(5), k):
        s = sum(min(int(row[j]), 20) for j in subset)
        want[s] = want.get(s, 0) + 1
    counts = got[str(k)]
    assert len(counts) == max(want) + 1
    assert {s: n for s, n in enumerate(counts) if n} == want
  assert sum(packing_stats.caption_sum_counts(lengths, 20)["2"]) == 40 * 10


@pytest.mark.parametrize("regions, drop", [(4, 0.5), (6, 0.2), (3, 0.9)])
def test_kept_regions_pmf_lists_the_pipelines_drop_patterns(regions, drop):
  want = np.zeros(regions + 1)
  for pattern in itertools.product([False, True], repeat=regions):  # True: dropped
    p = math.prod(drop if d else 1 - drop for d in pattern)
    pattern = list(pattern)
    pattern[0] &= not all(pattern)  # plan.region_keep keeps region 0 then
    want[regions - sum(pattern)] += p
  np.testing.assert_allclose(packing_stats.kept_regions_pmf(regions, drop), want, atol=1e-15)


def test_the_pipelines_batches_follow_the_derived_distribution():
  """Token totals of sampled batches (memory.sample: K of C captions per image) and kept
  regions (memory.region_keep_mask) against the distributions `derive` reads."""
  rng = np.random.default_rng(1)
  n, c, k, b, steps = 500, 5, 2, 16, 3000
  lengths = rng.integers(5, 25, (n, c))
  tokens, regions = [], []
  for step in range(steps):
    images, slots = memory.sample(3, step, n, b, c, k)
    tokens.append(lengths[images[:, None], slots].sum())
    regions.append(memory.region_keep_mask(3, step, b, 5, 0.5).sum())
  for observed, pmf in ((tokens, packing_stats.caption_sum_counts(lengths, 40)[str(k)]),
                        (regions, packing_stats.kept_regions_pmf(5, 0.5))):
    total = packing_stats.sum_pmf(pmf, b)
    values = np.arange(len(total))
    mean = values @ total
    sd = math.sqrt((values - mean) ** 2 @ total)
    assert abs(np.mean(observed) - mean) < 4 * sd / math.sqrt(steps)
    assert np.std(observed) == pytest.approx(sd, rel=0.06)
    # The tail that sizes the buffers: P(sum > C) at C for a 5% overflow.
    cut = packing_stats.rows_for(pmf, b, 0.05)
    frequency = np.mean(np.asarray(observed) > cut)
    assert abs(frequency - total[cut + 1:].sum()) < 4 * math.sqrt(0.05 * 0.95 / steps)


class _Stats:
  def __init__(self, lengths, num_regions):
    self.lengths, self.num_regions = lengths, num_regions

  def caption_sum_counts(self, max_tokens):
    return None if self.lengths is None else packing_stats.caption_sum_counts(self.lengths,
                                                                          max_tokens)


def _config(**model):
  config = ml_collections.ConfigDict({
      "batch_size": 32,
      "data": {"captions_per_image": 2, "max_tokens": 20, "region_drop": 0.2},
      "model": {"text": "bert", "image": "regions", "text_token_capacity": 0.75,
                "region_capacity": 0.85, "packing_overflow": 1e-3}})
  config.model.update(model)
  return config


def test_derive_sets_the_fractions_of_the_packing_towers():
  lengths = np.random.default_rng(2).integers(4, 12, (100, 5))
  config = _config()
  lines = packing_stats.derive(config, _Stats(lengths, 10), data_devices=4)
  each = 1e-3 / (2 * 4)  # two packed masks, four devices
  units = 32 // 4
  counts = packing_stats.caption_sum_counts(lengths, 20)["2"]
  want_text = packing_stats.rows_for(counts, units, each)
  want_regions = packing_stats.rows_for(packing_stats.kept_regions_pmf(10, 0.2), units, each)
  assert config.model.text_token_capacity == want_text / (units * 2 * 20)
  assert config.model.region_capacity == want_regions / (units * 10)
  assert len(lines) == 2 and "was 0.75" in lines[0] and "was 0.85" in lines[1]


@pytest.mark.parametrize("model, lengths, regions, want", [
    ({"packing_overflow": 0.0}, "some", 10, (0.75, 0.85)),  # off
    ({"text_token_capacity": 0.0, "region_capacity": 0.0}, "some", 10, (0.0, 0.0)),  # padded
    ({"text": "bigru"}, "some", None, (0.75, 0.85)),  # no packing tower
    ({}, None, 10, (0.75, None)),  # lengths not recorded: fixed text, derived regions
])
def test_derive_keeps_what_it_cannot_or_should_not_derive(model, lengths, regions, want):
  lengths = np.full((10, 5), 6) if lengths else None
  config = _config(**model)
  lines = packing_stats.derive(config, _Stats(lengths, regions), data_devices=1)
  got = (config.model.text_token_capacity, config.model.region_capacity)
  assert got[0] == want[0]
  assert got[1] == want[1] if want[1] is not None else got[1] != 0.85
  if lengths is None:
    assert "not recorded" in lines[0]
