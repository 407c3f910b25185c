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


def kendall_tau(x, y, mask=None):
  """Kendall tau-b of x and y along the last axis, row by row.

  Args:
    x: (..., m) values.
    y: (..., m) values.
    mask: optional (..., m) bool; only entries where it is True take part.

  Returns:
    (...,) float64 tau-b, `(concordant - discordant) / sqrt(n_x * n_y)` with
    n_x (n_y) the pairs not tied in x (y); NaN where fewer than two entries
    take part or all of them tie in x or in y.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  mask = np.ones(x.shape, bool) if mask is None else np.asarray(mask, bool)
  pair = mask[..., :, None] & mask[..., None, :]
  sx = np.sign(x[..., :, None] - x[..., None, :]) * pair
  sy = np.sign(y[..., :, None] - y[..., None, :]) * pair
  # Every unordered pair appears twice in the full m x m grid; the ratio is
  # unchanged.
  s = (sx * sy).sum(axis=(-2, -1))
  norm = np.sqrt(np.abs(sx).sum(axis=(-2, -1)) * np.abs(sy).sum(axis=(-2, -1)))
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(norm > 0, s / np.where(norm > 0, norm, 1), np.nan)


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
