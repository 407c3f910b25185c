"""Graded retrieval metrics: nDCG@K and generic-to-specific order agreement."""
import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ditm_jax.evaluation import recall

NDCG_CHUNK = 1024


@functools.partial(jax.jit, static_argnames=('k',))
def _dcg_rows(sims, relevance, k):
  """(DCG@k, ideal DCG@k) per row, linear gain."""
  discount = 1.0 / jnp.log2(jnp.arange(2, k + 2, dtype=jnp.float32))
  _, top = lax.top_k(sims, k)
  dcg = jnp.take_along_axis(relevance, top, axis=1) @ discount
  ideal = lax.top_k(relevance, k)[0] @ discount
  return dcg, ideal


def ndcg_at_k(sims, relevance, k=10, chunk=NDCG_CHUNK):
  """Mean nDCG@k over queries (rows) that have any relevant candidate.

  Linear gain: `DCG@k = sum_{j=1..k} rel(j-th ranked) / log2(j + 1)`, with
  candidates ordered by decreasing similarity (equal scores: lower index
  first); `IDCG@k` is the same sum over the relevances sorted in decreasing
  order. Rows whose relevance is all zero are skipped; NaN if every row is.

  Args:
    sims: (n_queries, n_candidates) similarities; pass `sims.T` for the other
      retrieval direction.
    relevance: graded relevance (>= 0) of the same shape.
    k: cut-off (clipped to n_candidates).
    chunk: query rows per device step.

  Returns:
    Mean nDCG@k as a float in [0, 1].
  """
  if not isinstance(sims, jax.Array):
    sims = np.asarray(sims)
  relevance = np.asarray(relevance, np.float32)
  if sims.ndim != 2 or sims.shape != relevance.shape:
    raise ValueError(f'sims {sims.shape} and relevance {relevance.shape} '
                     'must be the same (n_queries, n_candidates) shape.')
  if (relevance < 0).any():
    raise ValueError('relevance must be non-negative.')
  k = min(k, sims.shape[1])
  parts = [_dcg_rows(sims[s:s + chunk], relevance[s:s + chunk], k)
           for s in range(0, sims.shape[0], chunk)]
  dcg = np.concatenate([np.asarray(p[0]) for p in parts])
  ideal = np.concatenate([np.asarray(p[1]) for p in parts])
  keep = ideal > 0
  return float(np.mean(dcg[keep] / ideal[keep])) if keep.any() else float('nan')


def _dense_ranks(x, valid):
  """Per-row dense ranks (0, 1, ...; ties share one) of a 2-D float array."""
  order = np.argsort(x, axis=1, kind='stable')
  ordered = np.take_along_axis(x, order, axis=1)
  step = np.zeros(x.shape, np.int32)
  step[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
  ranks = np.empty(x.shape, np.int32)
  np.put_along_axis(ranks, order, np.cumsum(step, axis=1, dtype=np.int32),
                    axis=1)
  return np.where(valid, ranks, -1)


def _pair_sums(rx, ry, valid):
  """Per row: sum of sign products, pairs untied in x, pairs untied in y."""
  pair = valid[:, :, None] & valid[:, None, :]
  if rx.shape[1] < 2**15:
    rx, ry = rx.astype(np.int16), ry.astype(np.int16)
  sx = np.sign(rx[:, :, None] - rx[:, None, :]).astype(np.int8)
  sx *= pair
  sy = np.sign(ry[:, :, None] - ry[:, None, :]).astype(np.int8)
  sy *= pair
  total = functools.partial(np.sum, axis=(1, 2), dtype=np.int64)
  return total(sx * sy), total(np.abs(sx)), total(np.abs(sy))


def kendall_tau(x, y, mask=None, max_pairs=1 << 24):
  """Kendall tau-b of x and y along the last axis, row by row.

  Args:
    x: (..., m) values.
    y: (..., m) values.
    mask: optional (..., m) bool; only entries where it is True take part.
    max_pairs: rows are processed in groups of at most this many pairs.

  Returns:
    (...,) float64 tau-b, `(concordant - discordant) / sqrt(n_x * n_y)` with
    n_x (n_y) the pairs not tied in x (y); NaN where fewer than two entries
    take part or all of them tie in x or in y.
  """
  mask = True if mask is None else np.asarray(mask, bool)
  x, y, mask = np.broadcast_arrays(
      np.asarray(x, np.float64), np.asarray(y, np.float64), mask)
  lead, m = x.shape[:-1], x.shape[-1]
  x, y, mask = (a.reshape(-1, m) for a in (x, y, mask))
  # Valid entries first, rows by ascending count: each group of rows is only
  # as wide as its longest row.
  counts = mask.sum(axis=1)
  by_count = np.argsort(counts, kind='stable')
  front = np.argsort(~mask[by_count], axis=1, kind='stable')
  take = lambda a: np.take_along_axis(a[by_count], front, axis=1)
  x, y, mask, counts = take(x), take(y), take(mask), counts[by_count]
  rx, ry = _dense_ranks(x, mask), _dense_ranks(y, mask)
  s, nx, ny = (np.zeros(len(x)) for _ in range(3))
  start = 0
  while start < len(x):
    cost = (np.arange(1, len(x) - start + 1)
            * counts[start:].astype(np.int64) ** 2)
    stop = start + max(1, int(np.searchsorted(cost, max_pairs, 'right')))
    width = max(int(counts[stop - 1]), 1)
    rows = slice(start, stop)
    s[rows], nx[rows], ny[rows] = _pair_sums(
        rx[rows, :width], ry[rows, :width], mask[rows, :width])
    start = stop
  # Every unordered pair is counted twice in the m x m grid; the ratio is
  # unchanged.
  norm = np.sqrt(nx * ny)
  tau = np.full(len(x), np.nan)
  tau[by_count] = np.where(norm > 0, s / np.where(norm > 0, norm, 1), np.nan)
  return tau.reshape(lead)


def order_tau(sims, positives, descriptiveness):
  """Mean over images of Kendall tau-b(similarity, descriptiveness).

  For each image, over its true captions: does the image score its more
  descriptive (specific) captions higher? Images with fewer than two true
  captions, or whose captions all tie in similarity or in descriptiveness,
  are skipped.

  Args:
    sims: (n_img, n_cap) image x caption similarities.
    positives: the true captions, either an (n_img, n_cap) bool mask or
      (n_pairs, 2) int (image, caption) pairs.
    descriptiveness: (n_cap,) descriptiveness of every caption.

  Returns:
    The mean tau-b as a float (NaN when no image qualifies).
  """
  sims = np.asarray(sims)
  d = np.asarray(descriptiveness, np.float64)
  if sims.ndim != 2 or d.shape != (sims.shape[1],):
    raise ValueError(f'sims {sims.shape} must be (n_img, n_cap) and '
                     f'descriptiveness {d.shape} (n_cap,).')
  positives = np.asarray(positives)
  if positives.dtype == bool:
    if positives.shape != sims.shape:
      raise ValueError(f'positive mask {positives.shape} != sims {sims.shape}.')
    positives = np.argwhere(positives)
  index = recall.pad_positives(positives, sims.shape[0])
  valid = index >= 0
  safe = np.maximum(index, 0)
  x = np.take_along_axis(sims, safe, axis=1)
  tau = kendall_tau(x, d[safe], valid)
  tau = tau[~np.isnan(tau)]
  return float(tau.mean()) if tau.size else float('nan')


def own_grade_tau(sims, relevance, captions_per_image):
  """Mean over images of Kendall tau-b(similarity, grade) over the image's own captions.

  Image i owns captions i*C .. i*C + C-1 (the standard protocol). Does the image score its
  more relevant (more specific) captions higher, by the ground truth rather than by the
  descriptiveness proxy? Own captions without a grade (0) and images whose graded captions
  all tie are skipped.
  """
  sims, relevance = np.asarray(sims), np.asarray(relevance)
  n, c = sims.shape[0], captions_per_image
  if sims.shape != relevance.shape or sims.shape[1] != n * c:
    raise ValueError(f'sims {sims.shape} and relevance {relevance.shape} must both be '
                     f'(n_img, n_img * {c}).')
  own = np.arange(n)[:, None] * c + np.arange(c)[None, :]
  x = np.take_along_axis(sims, own, axis=1)
  y = np.take_along_axis(relevance, own, axis=1)
  tau = kendall_tau(x, y, y > 0)
  tau = tau[~np.isnan(tau)]
  return float(tau.mean()) if tau.size else float('nan')
