"""Recall@K, median and mean rank for image-text retrieval.

The protocol is VSE-infinity's `lib/evaluation.py` (`i2t`, `t2i`, `evalrank`
with `fold5`): caption `k*i .. k*i + k-1` belongs to image `i` (k = 5 for COCO
and Flickr30K). Ranks are 0-based and count the candidates that score strictly
higher than the positive, so a tie never counts against the query:

- image->text rank of image `i`: the best (smallest) rank among its captions,
  i.e. the number of captions scoring strictly higher than its best caption;
- text->image rank of caption `c`: the number of images scoring strictly higher
  than its own image.

`R@K = 100 * mean(rank < K)`, `medr = floor(median(rank)) + 1`,
`meanr = mean(rank) + 1`, `rsum` = the sum of the six recalls.

Ranks are computed on device by counting, in chunks of image rows, so no
step holds more than `chunk x n_captions` scores: no sort, no per-query Python
loop, and no `n_captions x n_captions` matrix. `numpy_ranks` is a plain
sort-based NumPy reference with the same tie rule.
"""
import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

DEFAULT_CHUNK = 256  # image rows per step when sims come from embeddings
SIMS_CHUNK = 32  # rows per step when ranking a given similarity matrix
RECALL_KS = (1, 5, 10)
METRIC_KEYS = tuple(
    f'{d}_{m}' for d in ('i2t', 't2i')
    for m in ('r1', 'r5', 'r10', 'medr', 'meanr')) + ('rsum',)
_HIGHEST = lax.Precision.HIGHEST


def _check_pairing(n_img, n_cap, captions_per_image):
  if captions_per_image < 1 or n_cap != n_img * captions_per_image:
    raise ValueError(
        f'{n_cap} captions for {n_img} images with captions_per_image='
        f'{captions_per_image}: caption k*i..k*i+k-1 must belong to image i, '
        'so n_captions must equal captions_per_image * n_images.')


def _chunk_start(step, chunk, n):
  """Start row of chunk `step`; the last chunk is shifted back to fit in n."""
  return jnp.minimum(step * chunk, n - chunk)


@functools.partial(jax.jit, static_argnames=('captions_per_image', 'chunk'))
def _ranks_from_sims(sims, captions_per_image, chunk):
  """(i2t_ranks, t2i_ranks) int32 from an (n_img, n_cap) similarity matrix."""
  n_img, n_cap = sims.shape
  chunk = min(chunk, n_img)
  cols = jnp.arange(n_cap)
  pos = sims[cols // captions_per_image, cols]  # s(own image, c): t2i bar
  best = pos.reshape(n_img, captions_per_image).max(axis=1)  # i2t threshold

  def body(step, carry):
    i2t, t2i = carry
    start = _chunk_start(step, chunk, n_img)
    block = lax.dynamic_slice_in_dim(sims, start, chunk, axis=0)
    thr = lax.dynamic_slice_in_dim(best, start, chunk)
    i2t = lax.dynamic_update_slice_in_dim(
        i2t, jnp.sum(block > thr[:, None], axis=1, dtype=jnp.int32), start, 0)
    # A shifted last chunk overlaps the previous one; count each row once.
    fresh = start + jnp.arange(chunk) >= step * chunk
    t2i += jnp.sum((block > pos[None, :]) & fresh[:, None], axis=0,
                   dtype=jnp.int32)
    return i2t, t2i

  init = (jnp.zeros(n_img, jnp.int32), jnp.zeros(n_cap, jnp.int32))
  return lax.fori_loop(0, -(-n_img // chunk), body, init)


@functools.partial(
    jax.jit, static_argnames=('captions_per_image', 'chunk', 'precision'))
def _ranks_from_embeddings(img, txt, captions_per_image, chunk, precision):
  """(i2t_ranks, t2i_ranks) int32, similarities formed chunk by chunk."""
  n_img, n_cap = img.shape[0], txt.shape[0]
  chunk = min(chunk, n_img)
  cols = jnp.arange(n_cap)
  owner = cols // captions_per_image
  # t2i thresholds from a row-wise dot; the positive itself is masked out of
  # the count below, so a last-bit difference from the matmul cannot count it.
  pos = jnp.einsum('cd,cd->c', img[owner], txt, precision=precision)

  def body(step, carry):
    i2t, t2i = carry
    start = _chunk_start(step, chunk, n_img)
    rows = start + jnp.arange(chunk)
    block = jnp.matmul(lax.dynamic_slice_in_dim(img, start, chunk, axis=0),
                       txt.T, precision=precision)
    own = rows[:, None] * captions_per_image + jnp.arange(captions_per_image)
    best = jnp.take_along_axis(block, own, axis=1).max(axis=1)
    i2t = lax.dynamic_update_slice_in_dim(
        i2t, jnp.sum(block > best[:, None], axis=1, dtype=jnp.int32), start, 0)
    counted = ((block > pos[None, :]) & (owner[None, :] != rows[:, None])
               & (rows >= step * chunk)[:, None])
    t2i += jnp.sum(counted, axis=0, dtype=jnp.int32)
    return i2t, t2i

  init = (jnp.zeros(n_img, jnp.int32), jnp.zeros(n_cap, jnp.int32))
  return lax.fori_loop(0, -(-n_img // chunk), body, init)


@functools.partial(jax.jit, donate_argnums=(3,))
def _count_rows(block, best, pos, t2i, skip):
  """Ranks for one host-streamed block of rows; skips its first `skip` rows."""
  i2t = jnp.sum(block > best[:, None], axis=1, dtype=jnp.int32)
  fresh = jnp.arange(block.shape[0]) >= skip
  return i2t, t2i + jnp.sum((block > pos[None, :]) & fresh[:, None], axis=0,
                            dtype=jnp.int32)


def _ranks_from_host_sims(sims, captions_per_image, chunk):
  """`_ranks_from_sims` for a NumPy matrix, streamed to device by row blocks.

  One transfer of a large matrix costs more than the ranking itself (on CPU,
  mostly page faults of the fresh buffer); small blocks avoid that.
  """
  n_img, n_cap = sims.shape
  chunk = min(chunk, n_img)
  cols = np.arange(n_cap)
  pos = sims[cols // captions_per_image, cols]
  best = pos.reshape(n_img, captions_per_image).max(axis=1)
  pos_d = jax.device_put(pos)
  t2i = jnp.zeros(n_cap, jnp.int32)
  i2t = []
  for s in range(0, n_img, chunk):
    start = min(s, n_img - chunk)
    rows = slice(start, start + chunk)
    i2t_block, t2i = _count_rows(sims[rows], best[rows], pos_d, t2i, s - start)
    i2t.append(i2t_block[s - start:])
  return jnp.concatenate(i2t), t2i


def ranks_from_sims(sims, captions_per_image=5, chunk=None):
  """0-based (i2t_ranks (n_img,), t2i_ranks (n_cap,)) from image x caption sims.

  A `jax.Array` is ranked where it lives and a NumPy array is streamed to the
  device, `chunk` rows at a time (default SIMS_CHUNK).
  """
  if not isinstance(sims, jax.Array):
    sims = np.asarray(sims)
  if sims.ndim != 2:
    raise ValueError(f'sims must be (n_images, n_captions), got {sims.shape}.')
  _check_pairing(*sims.shape, captions_per_image)
  if isinstance(sims, jax.Array):
    return _ranks_from_sims(sims, captions_per_image, chunk or SIMS_CHUNK)
  return _ranks_from_host_sims(sims, captions_per_image, chunk or SIMS_CHUNK)


def ranks_from_embeddings(img_emb, txt_emb, captions_per_image=5,
                          chunk=DEFAULT_CHUNK, precision=_HIGHEST):
  """0-based (i2t_ranks, t2i_ranks) with similarities `img_emb @ txt_emb.T`.

  The similarity matrix is never whole: each step forms `chunk` image rows
  against all captions (chunk x n_cap). Pass L2-normalised embeddings for
  cosine similarity. A caption's own-image score, the text->image threshold,
  comes from a row-wise dot product computed before the sweep, so ranks agree
  with those of the full product up to scores within rounding of it.
  """
  img, txt = jnp.asarray(img_emb), jnp.asarray(txt_emb)
  if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
    raise ValueError(
        f'Embeddings must be (n, D), same D; got {img.shape}, {txt.shape}.')
  _check_pairing(img.shape[0], txt.shape[0], captions_per_image)
  return _ranks_from_embeddings(img, txt, captions_per_image, chunk, precision)


def _rank_summary(ranks, prefix):
  ranks = np.asarray(ranks, np.float64)
  out = {f'{prefix}_r{k}': 100.0 * float(np.mean(ranks < k)) for k in RECALL_KS}
  out[f'{prefix}_medr'] = float(np.floor(np.median(ranks)) + 1)
  out[f'{prefix}_meanr'] = float(ranks.mean() + 1)
  return out


def metrics_from_ranks(i2t_ranks, t2i_ranks):
  """R@1/5/10, medr, meanr per direction, and rsum, as Python floats."""
  out = {**_rank_summary(i2t_ranks, 'i2t'), **_rank_summary(t2i_ranks, 't2i')}
  out['rsum'] = sum(out[f'{d}_r{k}'] for d in ('i2t', 't2i') for k in RECALL_KS)
  return out


def _mean_metrics(per_fold):
  return {k: float(np.mean([m[k] for m in per_fold])) for k in METRIC_KEYS}


def _folds(n_img, captions_per_image):
  if n_img % 5:
    raise ValueError(f'fold5 needs a multiple of 5 images, got {n_img}.')
  size = n_img // 5
  return [(slice(f * size, (f + 1) * size),
           slice(f * size * captions_per_image,
                 (f + 1) * size * captions_per_image)) for f in range(5)]


def i2t_t2i(sims, captions_per_image=5, fold5=False, chunk=None):
  """Recall metrics from an (n_img, n_img * captions_per_image) sims matrix.

  `fold5=True` is COCO 1K: five folds of n_img / 5 consecutive images (1000 for
  the 5K test) against their own captions; every metric, rsum included, is the
  mean of the five per-fold values.
  """
  sims = np.asarray(sims) if not isinstance(sims, jax.Array) else sims
  if sims.ndim != 2:
    raise ValueError(f'sims must be (n_images, n_captions), got {sims.shape}.')
  _check_pairing(*sims.shape, captions_per_image)
  if not fold5:
    return metrics_from_ranks(*ranks_from_sims(sims, captions_per_image, chunk))
  return _mean_metrics([
      metrics_from_ranks(
          *ranks_from_sims(sims[r, c], captions_per_image, chunk))
      for r, c in _folds(sims.shape[0], captions_per_image)])


def recall_from_embeddings(img_emb, txt_emb, captions_per_image=5, fold5=False,
                           chunk=DEFAULT_CHUNK, precision=_HIGHEST):
  """`i2t_t2i` of `img_emb @ txt_emb.T`, formed on device chunk by chunk."""
  img, txt = jnp.asarray(img_emb), jnp.asarray(txt_emb)
  _check_pairing(img.shape[0], txt.shape[0], captions_per_image)
  if not fold5:
    return metrics_from_ranks(*ranks_from_embeddings(
        img, txt, captions_per_image, chunk, precision))
  return _mean_metrics([
      metrics_from_ranks(*ranks_from_embeddings(
          img[r], txt[c], captions_per_image, chunk, precision))
      for r, c in _folds(img.shape[0], captions_per_image)])


def pad_positives(pairs, n_queries):
  """(n_queries, P) int32 candidate indices from (query, candidate) pairs.

  Rows are padded with -1 to the largest number of positives of any query;
  duplicate pairs are kept once.
  """
  pairs = np.unique(np.asarray(pairs, np.int64).reshape(-1, 2), axis=0)
  if len(pairs) and (pairs.min() < 0 or pairs[:, 0].max() >= n_queries):
    raise ValueError(f'Positive pairs out of range for {n_queries} queries.')
  counts = np.bincount(pairs[:, 0], minlength=n_queries)
  out = np.full((n_queries, max(int(counts.max(initial=0)), 1)), -1, np.int32)
  slot = np.arange(len(pairs)) - np.repeat(np.cumsum(counts) - counts, counts)
  out[pairs[:, 0], slot] = pairs[:, 1]
  return out


@functools.partial(jax.jit, static_argnames=('exclude_self', 'chunk',
                                             'precision'))
def _multi_positive_ranks(queries, candidates, positives, exclude_self, chunk,
                          precision):
  n_q, n_c = queries.shape[0], candidates.shape[0]
  chunk = min(chunk, n_q)
  cols = jnp.arange(n_c)

  def body(step, ranks):
    start = _chunk_start(step, chunk, n_q)
    rows = start + jnp.arange(chunk)
    block = jnp.matmul(lax.dynamic_slice_in_dim(queries, start, chunk, axis=0),
                       candidates.T, precision=precision)
    if exclude_self:
      block = jnp.where(cols[None, :] == rows[:, None], -jnp.inf, block)
    idx = lax.dynamic_slice_in_dim(positives, start, chunk, axis=0)
    valid = idx >= 0
    pos = jnp.take_along_axis(block, jnp.maximum(idx, 0), axis=1)
    best = jnp.max(jnp.where(valid, pos, -jnp.inf), axis=1)
    rank = jnp.sum(block > best[:, None], axis=1, dtype=jnp.int32)
    rank = jnp.where(valid.any(axis=1), rank, -1)
    return lax.dynamic_update_slice_in_dim(ranks, rank, start, 0)

  return lax.fori_loop(0, -(-n_q // chunk), body, jnp.zeros(n_q, jnp.int32))


def multi_positive_ranks(queries, candidates, positives, exclude_self=False,
                         chunk=DEFAULT_CHUNK, precision=_HIGHEST):
  """Rank of each query's best-scoring positive among all candidates.

  Args:
    queries: (n_q, D) query embeddings.
    candidates: (n_c, D) candidate embeddings; similarity is the dot product.
    positives: (n_q, P) int candidate indices, -1 padded (see `pad_positives`).
    exclude_self: drop candidate `q` from query `q`'s list (same-modality
      retrieval, where queries and candidates are the same set).
    chunk: query rows per step; a step holds chunk x n_c scores.
    precision: matmul precision.

  Returns:
    (n_q,) int32 0-based ranks (number of candidates scoring strictly higher
    than the best positive), -1 for queries without positives. A query is a hit
    at K when its rank < K.
  """
  q, c = jnp.asarray(queries), jnp.asarray(candidates)
  positives = jnp.asarray(positives, jnp.int32)
  if positives.shape[0] != q.shape[0]:
    raise ValueError(f'positives has {positives.shape[0]} rows for '
                     f'{q.shape[0]} queries.')
  return _multi_positive_ranks(q, c, positives, exclude_self, chunk, precision)


def _strict_ranks_numpy(scores, targets, chunk):
  """Strict rank of candidate targets[r, j] in row r of scores, by sorting."""
  n_rows, n_cols = scores.shape
  out = np.empty(targets.shape, np.int64)
  arange = np.arange(n_cols)
  for s in range(0, n_rows, chunk):
    block = scores[s:s + chunk]
    order = np.argsort(-block, axis=1, kind='stable')
    ordered = np.take_along_axis(block, order, axis=1)
    new_value = np.ones(ordered.shape, bool)
    new_value[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    # Strict rank = position of the first entry of the run of equal scores.
    first = np.maximum.accumulate(np.where(new_value, arange, 0), axis=1)
    rank_of = np.empty_like(order)
    np.put_along_axis(rank_of, order, first, axis=1)
    out[s:s + chunk] = np.take_along_axis(rank_of, targets[s:s + chunk], axis=1)
  return out


def numpy_ranks(sims, captions_per_image=5, chunk=256):
  """Plain NumPy (argsort-based) reference for `ranks_from_sims`."""
  sims = np.asarray(sims)
  n_img, n_cap = sims.shape
  _check_pairing(n_img, n_cap, captions_per_image)
  own = np.arange(n_cap).reshape(n_img, captions_per_image)
  i2t = _strict_ranks_numpy(sims, own, chunk).min(axis=1)
  t2i = _strict_ranks_numpy(
      sims.T, (np.arange(n_cap) // captions_per_image)[:, None], chunk)[:, 0]
  return i2t, t2i


def i2t_t2i_numpy(sims, captions_per_image=5):
  """Plain NumPy reference for `i2t_t2i` (no folds)."""
  return metrics_from_ranks(*numpy_ranks(sims, captions_per_image))
