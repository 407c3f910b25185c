"""Tests for ditm_jax.evaluation.graded."""
import itertools
import math

import numpy as np
import pytest

from ditm_jax.evaluation import graded


def test_ndcg_hand_worked():
  sims = np.array([[0.9, 0.8, 0.1, 0.5],
                   [0.1, 0.2, 0.3, 0.4],   # nothing relevant: skipped
                   [0.1, 0.9, 0.2, 0.3]], np.float32)
  rel = np.array([[0, 2, 1, 0],
                  [0, 0, 0, 0],
                  [0, 3, 0, 1]], np.float32)
  # Row 0 top-2 = items 0, 1: DCG = 0 + 2/log2(3); IDCG = 2 + 1/log2(3).
  row0 = (2 / math.log2(3)) / (2 + 1 / math.log2(3))
  assert graded.ndcg_at_k(sims, rel, k=2) == pytest.approx((row0 + 1) / 2)
  # k beyond the candidates is clipped: row 0 full ranking 0, 1, 3, 2.
  full0 = (2 / math.log2(3) + 1 / math.log2(5)) / (2 + 1 / math.log2(3))
  assert graded.ndcg_at_k(sims[:1], rel[:1], k=10) == pytest.approx(full0)
  assert math.isnan(graded.ndcg_at_k(sims[1:2], rel[1:2]))


def test_ndcg_matches_loop_reference():
  rng = np.random.default_rng(0)
  sims = rng.standard_normal((30, 40)).astype(np.float32)
  rel = rng.integers(0, 4, (30, 40)) * (rng.random((30, 40)) < 0.2)
  rel[3] = 0
  want = []
  for s, r in zip(sims, rel):
    if r.sum() == 0:
      continue
    dcg = sum(r[j] / math.log2(i + 2)
              for i, j in enumerate(np.argsort(-s)[:10]))
    idcg = sum(v / math.log2(i + 2) for i, v in enumerate(sorted(r)[::-1][:10]))
    want.append(dcg / idcg)
  got = graded.ndcg_at_k(sims, rel, k=10, chunk=7)
  assert got == pytest.approx(np.mean(want), rel=1e-6)


def test_kendall_tau_matches_pair_count():
  rng = np.random.default_rng(1)
  for _ in range(20):
    x, y = rng.integers(0, 3, 6), rng.integers(0, 3, 6)
    conc = disc = tx = ty = 0
    for a, b in itertools.combinations(range(6), 2):
      dx, dy = np.sign(x[a] - x[b]), np.sign(y[a] - y[b])
      conc += dx * dy > 0
      disc += dx * dy < 0
      tx += dx == 0
      ty += dy == 0
    n0 = 15
    if tx == n0 or ty == n0:
      assert math.isnan(graded.kendall_tau(x, y))
    else:
      want = (conc - disc) / math.sqrt((n0 - tx) * (n0 - ty))
      assert graded.kendall_tau(x, y) == pytest.approx(want)


def test_order_tau_hand_worked():
  sims = np.array([[0.1, 0.3, 0.2, 0.0, 0.0, 0.0, 0.0],
                   [0.0, 0.0, 0.0, 0.5, 0.5, 0.1, 0.0],
                   [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.7]])
  d = np.array([0.2, 0.5, 0.9, 0.1, 0.2, 0.3, 0.4])
  mask = np.zeros(sims.shape, bool)
  mask[0, :3] = mask[1, 3:6] = mask[2, 6] = True
  # Image 0: pairs (+, +, -) -> 1/3. Image 1: x tie on (3, 4), both other
  # pairs discordant -> -2 / sqrt(2 * 3). Image 2: one caption, skipped.
  want = (1 / 3 - 2 / math.sqrt(6)) / 2
  assert graded.order_tau(sims, mask, d) == pytest.approx(want)
  assert graded.order_tau(sims, np.argwhere(mask), d) == pytest.approx(want)
  assert graded.order_tau(sims, mask, sims.max(axis=0)) == pytest.approx(1.0)
  assert math.isnan(graded.order_tau(sims, [[2, 6]], d))


def test_kendall_tau_masked_rows_in_small_groups():
  rng = np.random.default_rng(2)
  x = rng.integers(0, 5, (200, 9)).astype(float)
  y = rng.integers(0, 5, (200, 9)).astype(float)
  mask = rng.random((200, 9)) < rng.random((200, 1))
  want = []
  for a, b, keep in zip(x, y, mask):
    a, b = a[keep], b[keep]
    sx, sy = np.sign(a[:, None] - a), np.sign(b[:, None] - b)
    norm = math.sqrt(np.abs(sx).sum() * np.abs(sy).sum())
    want.append((sx * sy).sum() / norm if norm else np.nan)
  got = graded.kendall_tau(x, y, mask, max_pairs=50)
  np.testing.assert_allclose(got, want, equal_nan=True)
  assert np.isnan(got).any() and not np.isnan(got).all()


def test_own_grade_tau_hand_worked():
  # Two images, two captions each (image i owns captions 2i, 2i+1); other images' captions
  # and their grades are ignored.
  sims = np.array([[0.2, 0.6, 0.9, 0.0],
                   [0.5, 0.5, 0.1, 0.4]])
  relevance = np.array([[1.0, 3.0, 5.0, 0.0],
                        [2.0, 0.0, 4.0, 1.0]])
  # Image 0: grades (1, 3), sims (0.2, 0.6): concordant, 1. Image 1: grades (4, 1), sims
  # (0.1, 0.4): discordant, -1. Mean 0.
  assert graded.own_grade_tau(sims, relevance, 2) == pytest.approx(0.0)
  relevance[1, 2:] = [1.0, 4.0]  # image 1 now concordant too
  assert graded.own_grade_tau(sims, relevance, 2) == pytest.approx(1.0)
  relevance[1, 3] = 0.0  # one graded caption left: image 1 is skipped
  assert graded.own_grade_tau(sims, relevance, 2) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="n_img \\* 3"):
    graded.own_grade_tau(sims, relevance, 3)
