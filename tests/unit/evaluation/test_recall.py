"""Tests for ditm_jax.evaluation.recall."""
import jax.numpy as jnp
import numpy as np
import pytest

from ditm_jax.evaluation import recall


def _loop_ranks(sims, k):
  """Ranks straight from the protocol text, one query at a time."""
  n_img, n_cap = sims.shape
  i2t = np.zeros(n_img, np.int64)
  for i in range(n_img):
    i2t[i] = min(int(np.sum(sims[i] > sims[i, c]))
                 for c in range(k * i, k * i + k))
  t2i = np.array([int(np.sum(sims[:, c] > sims[c // k, c]))
                  for c in range(n_cap)])
  return i2t, t2i


def _loop_metrics(i2t, t2i):
  out = {}
  for name, ranks in (('i2t', i2t), ('t2i', t2i)):
    for k in (1, 5, 10):
      out[f'{name}_r{k}'] = 100.0 * sum(r < k for r in ranks) / len(ranks)
    out[f'{name}_medr'] = np.floor(np.median(ranks)) + 1
    out[f'{name}_meanr'] = sum(ranks) / len(ranks) + 1
  out['rsum'] = sum(out[f'{d}_r{k}'] for d in ('i2t', 't2i')
                    for k in (1, 5, 10))
  return out


def _assert_metrics(got, want, tol=1e-4):
  assert set(got) == set(recall.METRIC_KEYS)
  for key in recall.METRIC_KEYS:
    assert isinstance(got[key], float), key
    assert got[key] == pytest.approx(want[key], abs=tol), key


def test_checked_value_from_design():
  sims = np.random.default_rng(0).standard_normal((1000, 5000)).astype(
      np.float32)
  want = dict(i2t_r1=0.1, i2t_r5=0.2, i2t_r10=0.2, i2t_medr=663,
              i2t_meanr=843.793, t2i_r1=0.02, t2i_r5=0.34, t2i_r10=0.78,
              t2i_medr=497, t2i_meanr=499.6314, rsum=1.64)
  _assert_metrics(recall.i2t_t2i(sims), want)
  _assert_metrics(recall.i2t_t2i(jnp.asarray(sims)), want)
  _assert_metrics(recall.i2t_t2i_numpy(sims), want)


@pytest.mark.parametrize('n_img,k,chunk', [(7, 5, 3), (12, 5, None),
                                           (9, 2, 4), (6, 1, 64)])
def test_matches_loop_reference_with_ties(n_img, k, chunk):
  rng = np.random.default_rng(n_img)
  # Few distinct values, so ties are everywhere.
  sims = rng.integers(0, 4, (n_img, n_img * k)).astype(np.float32)
  want_i2t, want_t2i = _loop_ranks(sims, k)
  for got in (recall.ranks_from_sims(sims, k, chunk),
              recall.ranks_from_sims(jnp.asarray(sims), k, chunk),
              recall.numpy_ranks(sims, k, chunk=chunk or 5)):
    np.testing.assert_array_equal(np.asarray(got[0]), want_i2t)
    np.testing.assert_array_equal(np.asarray(got[1]), want_t2i)
  _assert_metrics(recall.i2t_t2i(sims, k, chunk=chunk),
                  _loop_metrics(want_i2t, want_t2i), tol=1e-9)


def test_fold5_is_mean_of_single_folds():
  rng = np.random.default_rng(1)
  n = 5000
  sims = rng.standard_normal((n, 5 * n), dtype=np.float32)
  # Some signal, stronger in later folds, so folds and metrics differ.
  cols = np.arange(5 * n)
  sims[cols // 5, cols] += 2.0 + (cols // 5) / 1000
  folds = [recall.i2t_t2i(sims[f * 1000:(f + 1) * 1000,
                               f * 5000:(f + 1) * 5000]) for f in range(5)]
  assert len({m['rsum'] for m in folds}) == 5
  want = {k: np.mean([m[k] for m in folds]) for k in recall.METRIC_KEYS}
  _assert_metrics(recall.i2t_t2i(sims, fold5=True), want, tol=1e-9)


def test_oracle_is_perfect():
  rng = np.random.default_rng(2)
  sims = rng.uniform(-1, 0, (50, 250)).astype(np.float32)
  cols = np.arange(250)
  sims[cols // 5, cols] = 1.0
  got = recall.i2t_t2i(sims)
  for d in ('i2t', 't2i'):
    assert got[f'{d}_r1'] == got[f'{d}_r5'] == got[f'{d}_r10'] == 100.0
    assert got[f'{d}_medr'] == got[f'{d}_meanr'] == 1.0
  assert got['rsum'] == 600.0


@pytest.mark.parametrize('chunk', [8, 37, 100])
def test_embeddings_match_full_sims(chunk):
  rng = np.random.default_rng(3)
  img = rng.standard_normal((37, 16)).astype(np.float32)
  txt = rng.standard_normal((185, 16)).astype(np.float32)
  sims = img @ txt.T
  want = _loop_ranks(sims, 5)
  got = recall.ranks_from_embeddings(img, txt, 5, chunk=chunk)
  np.testing.assert_array_equal(np.asarray(got[0]), want[0])
  np.testing.assert_array_equal(np.asarray(got[1]), want[1])
  _assert_metrics(recall.recall_from_embeddings(img, txt, chunk=chunk),
                  recall.i2t_t2i(sims), tol=1e-9)


def test_embeddings_fold5():
  rng = np.random.default_rng(4)
  img = rng.standard_normal((50, 8)).astype(np.float32)
  txt = np.repeat(img, 5, axis=0) + rng.standard_normal((250, 8)).astype(
      np.float32)
  _assert_metrics(recall.recall_from_embeddings(img, txt, fold5=True),
                  recall.i2t_t2i(img @ txt.T, fold5=True), tol=1e-9)


def test_multi_positive_ranks():
  rng = np.random.default_rng(5)
  q = rng.standard_normal((11, 6)).astype(np.float32)
  c = rng.standard_normal((11, 6)).astype(np.float32)
  pairs = np.array([[0, 3], [0, 5], [2, 2], [2, 7], [2, 7], [4, 0], [10, 9]])
  index = recall.pad_positives(pairs, 11)
  assert index.shape == (11, 2)
  np.testing.assert_array_equal(index[2], [2, 7])
  np.testing.assert_array_equal(index[1], [-1, -1])
  for exclude_self in (False, True):
    sims = q @ c.T
    if exclude_self:
      np.fill_diagonal(sims, -np.inf)
    want = np.full(11, -1)
    for i in range(11):
      pos = pairs[pairs[:, 0] == i, 1]
      if len(pos):
        want[i] = min(np.sum(sims[i] > sims[i, p]) for p in pos)
    got = recall.multi_positive_ranks(q, c, index, exclude_self, chunk=4)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_bad_pairing_is_an_error():
  with pytest.raises(ValueError, match='captions_per_image'):
    recall.i2t_t2i(np.zeros((4, 19), np.float32))
  with pytest.raises(ValueError, match='multiple of 5'):
    recall.i2t_t2i(np.zeros((4, 20), np.float32), fold5=True)
