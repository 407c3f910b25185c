"""The DITM objective: pure, jit-able functions of arrays.

A batch holds B images and K captions per image, flattened image-major, so caption n belongs
to image n // K; d[n] in [0, 1] is caption n's descriptiveness. With S = img @ txt.T (B, B*K):

  P[i, n]  = image_id[i] == image_id[n // K]                   # positives
  r[i, n]  = sg(β (1 - d[n]) σ((S[i, n] - mean_pos_i) / τr))    # i2t relaxation, 0 on P
  r'[i, n] = sg(β (1 - d[n]) σ((S[i, n] - S[n // K, n]) / τr))  # t2i relaxation, 0 on P
  L        = L_match + λ s L_ord                               # s = B (triplet) | 1 (infonce)

The six public functions (`similarity`, `positive_mask`, `relaxation`, `infonce_loss`,
`triplet_loss`, `ordering_loss`) keep DESIGN §3's meaning. The `ditm` presets use InfoNCE with
two more terms, chosen by a multi-seed study on two worlds (configs/README.md):

  Budget ρ (loss.relax_budget): per row, r_b[i] = r[i] min(1, ρ |P_i| / Σ_n r[i, n]); per
    column the same for r'. Without it, relaxed negatives can outweigh the positives and pull
    ever more generic captions up (a feedback loop through S).
  Graded positives g (loss.target_grading): w[i, n] = |P_i| exp(g d[n]) / Σ_{m: P[i, m]}
    exp(g d[m]) on i's positives, so the more specific caption gets more target mass.
  L_match = mean_i CE(softmax(S[i] / τ), norm(w + r_b)[i])
          + mean_n CE(softmax(S[:, n] / τ), norm(P + r'_b)[:, n])
  L_ord   = mean over i and pairs a, b of i's positives with d[b] - d[a] > δ of
            [γ (d[b] - d[a]) - (S[i, b] - S[i, a])]+

With g = 0 and ρ = inf this is DESIGN §3's soft-target InfoNCE. At the optimum of the graded
targets two positives' similarities differ by τ g (d[b] - d[a]): the ordering margin γ = τ g.
The triplet form (`loss.matching='triplet'`) is the hardest-negative loss of DESIGN §3.
"""
# pylint: disable=invalid-name  # S, P, K: the formula's symbols.
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

MATCHING = ("infonce", "triplet")


def _captions_per_image(S: jax.Array) -> int:
  b, bk = S.shape
  if bk % b:
    raise ValueError(f"similarity of shape {S.shape}: expected (B, B*K)")
  return bk // b


@jax.jit
def similarity(img: jax.Array, txt: jax.Array) -> jax.Array:
  """S = img @ txt.T, (B, B*K), in float32 or wider."""
  dtype = jnp.promote_types(jnp.result_type(img, txt), jnp.float32)
  return jnp.matmul(img.astype(dtype), txt.astype(dtype).T)


@functools.partial(jax.jit, static_argnames="K")
def positive_mask(img_ids: jax.Array, K: int) -> jax.Array:
  """P[i, n] = img_ids[i] == img_ids[n // K], bool (B, B*K)."""
  return img_ids[:, None] == jnp.repeat(img_ids, K)[None, :]


@jax.jit
def relaxation(S: jax.Array, P: jax.Array, d: jax.Array, beta,
               temp) -> tuple[jax.Array, jax.Array]:
  """False-negative relaxation (r, r'), each (B, B*K), 0 on positives, sg.

  Args:
    S: similarities (B, B*K).
    P: positive mask (B, B*K), bool or 0/1.
    d: descriptiveness of each caption (B*K,), in [0, 1].
    beta: β, relaxation strength (a scalar, may be traced).
    temp: τr, temperature of the sigmoid.
  """
  S, d = jax.lax.stop_gradient((S, d))
  P = P.astype(bool)
  k = _captions_per_image(S)
  pos = P.astype(S.dtype)
  mean_pos = jnp.sum(S * pos, 1, keepdims=True) / jnp.maximum(
      jnp.sum(pos, 1, keepdims=True), 1.0)  # mean_pos_i
  columns = jnp.arange(S.shape[1])
  own = S[columns // k, columns][None, :]  # S[n // K, n]
  weight = beta * (1.0 - d.astype(S.dtype))[None, :]  # β (1 - d[n])
  r = jnp.where(P, 0.0, weight * jax.nn.sigmoid((S - mean_pos) / temp))
  r_prime = jnp.where(P, 0.0, weight * jax.nn.sigmoid((S - own) / temp))
  return jax.lax.stop_gradient((r, r_prime))


# ---- Row views: the terms over a block of rows, shared by the plain and the sharded form.
#
# A row view is X (R, N), a block of rows of S (image->text) or of S.T (text->image), with
# its positive mask `pos` (R, N) and each row's own positives: the m columns
# own_start[l] .. own_start[l] + m - 1 (an image's K captions, or a caption's image).
# The plain form passes all of S; the sharded form (ditm_jax.losses_sharded) passes one
# device's rows. When every row's positives are exactly its own columns (no image twice
# in the batch) the terms cost O(R m N); otherwise an exact path pairs every column with
# every column, O(R N^2) time in blocks of the same O(R m N) memory.


def _masked_reduce(values, mask, axis, max_violation):
  """Max (0 over an empty set) or sum of `values` where `mask`, along axis."""
  if max_violation:
    best = jnp.max(jnp.where(mask, values, -jnp.inf), axis)
    return jnp.where(jnp.any(mask, axis), best, 0.0)
  return jnp.sum(jnp.where(mask, values, 0.0), axis)


def _only_own(pos, own_start, m):
  """Whether each row's positives are exactly its m own columns."""
  cols = jnp.arange(pos.shape[1])[None, :]
  own = (cols >= own_start[:, None]) & (cols < own_start[:, None] + m)
  return jnp.all(pos == own)


def _own_columns(X, own_start, m):
  """Each row's own columns (R, m) and their values in X."""
  idx = own_start[:, None] + jnp.arange(m)[None, :]
  return idx, jnp.take_along_axis(X, idx, 1)


def _zero(x, dtype=None):
  """A scalar 0 typed like `x` (inside a shard_map: varying over the same mesh axes)."""
  return jnp.zeros_like(x, dtype=dtype, shape=())


def _chunked_sum(fn, cols, m, init):
  """Sum of fn(start, c) over the column blocks [start, start + c) of `cols` columns.

  c is the largest divisor of cols up to m, so a block's (R, c, N) temporaries are no
  larger than the (R, m, N) of the own-columns path. Each block is rematerialised in the
  backward pass, so memory stays at one block.
  """
  c = max(v for v in range(1, min(m, cols) + 1) if cols % v == 0)
  body = lambda total, start: (jax.tree.map(jnp.add, total, fn(start, c)), None)
  total, _ = jax.lax.scan(jax.checkpoint(body), init, jnp.arange(0, cols, c))
  return total


def _cols(start, size, *arrays):
  return [jax.lax.dynamic_slice_in_dim(a, start, size, a.ndim - 1) for a in arrays]


def row_hardest(X, pos, weight, own_start, m, margin, max_violation):
  """Sum over positives (l, p) of: reduce over negatives n of w[l, n] [α + X[l, n] - X[l, p]]+.

  `weight` (R, N) is 1 - r (or 1 - r'); reduce is max (`max_violation`) or sum.
  """
  neg = ~pos

  def per_positive(x_pos):  # x_pos (R, c): X[l, p] of c positives per row -> (R, c)
    cost = weight[:, None, :] * jax.nn.relu(margin + X[:, None, :] - x_pos[:, :, None])
    if not max_violation:
      return _masked_reduce(cost, neg[:, None, :], 2, False)
    # The hardest negative n* without gradient, then the cost at n*: the same value, and
    # a backward pass that touches (R, c) entries instead of (R, c, N).
    hardest = jnp.argmax(jnp.where(neg[:, None, :], jax.lax.stop_gradient(cost), -jnp.inf), 2)
    at = lambda a: jnp.take_along_axis(a, hardest, 1)
    value = at(weight) * jax.nn.relu(margin + at(X) - x_pos)
    return jnp.where(jnp.any(neg, 1, keepdims=True), value, 0.0)

  def own():
    return jnp.sum(per_positive(_own_columns(X, own_start, m)[1]))

  def every():
    def block(start, c):
      x_pos, p_pos = _cols(start, c, X, pos)
      return jnp.sum(jnp.where(p_pos, per_positive(x_pos), 0.0))
    return _chunked_sum(block, X.shape[1], m, _zero(X))

  return jax.lax.cond(_only_own(pos, own_start, m), own, every)


def row_ordering(X, pos, d, own_start, m, gamma, min_gap):
  """(sum of [γ (d[b] - d[a]) - (X[l, b] - X[l, a])]+, number of pairs) over the rows.

  Pairs: a, b both positives of row l with d[b] - d[a] > δ; `d` (N,) is per column.
  """
  d = d.astype(X.dtype)

  def pairs(x_a, d_a, pos_a, x_b, d_b, pos_b):  # axes (l, a, b)
    gap = d_b[..., None, :] - d_a[..., :, None]
    eligible = pos_a[:, :, None] & pos_b[:, None, :] & (gap > min_gap)
    hinge = jax.nn.relu(gamma * gap - (x_b[:, None, :] - x_a[:, :, None]))
    return jnp.sum(jnp.where(eligible, hinge, 0.0)), jnp.sum(eligible, dtype=jnp.int32)

  def own():
    idx, x = _own_columns(X, own_start, m)
    valid = jnp.ones(idx.shape, bool)
    return pairs(x, d[idx], valid, x, d[idx], valid)

  def every():
    def block(start, c):
      x_b, p_b, d_b = _cols(start, c, X, pos, d[None, :])
      return pairs(X, d[None, :], pos, x_b, d_b, p_b)
    return _chunked_sum(block, X.shape[1], m, (_zero(X), _zero(X, jnp.int32)))

  return jax.lax.cond(_only_own(pos, own_start, m), own, every)


def row_infonce(X, pos, r, temperature, pos_logit=None, budget=math.inf):
  """Sum over rows of CE(softmax(X[l] / τ), y[l]), y[l] = (w + r_b)[l] normalised.

  w = pos, or with `pos_logit` (R, N) graded: |pos_l| softmax of pos_logit over the row's
  positives (the same total). r_b = r, scaled down where a row's relaxed mass exceeds
  `budget` times its positive mass |pos_l|.
  """
  pos = pos.astype(bool)
  w = pos.astype(X.dtype)
  count = jnp.sum(w, 1, keepdims=True)
  if pos_logit is not None:
    logit = jnp.where(pos, pos_logit.astype(X.dtype), -jnp.inf)
    top = jnp.max(logit, 1, keepdims=True)
    e = jnp.where(pos, jnp.exp(logit - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    w = count * e / jnp.maximum(jnp.sum(e, 1, keepdims=True), 1e-30)
  mass = jnp.sum(r, 1, keepdims=True)
  cap = budget * count
  r = r * jnp.where(mass > cap, cap / jnp.maximum(mass, 1e-30), 1.0)
  y = w + r
  y = y / jnp.sum(y, 1, keepdims=True)
  return -jnp.sum(y * jax.nn.log_softmax(X / temperature, 1))


def _infonce_terms(S, P, r, r_prime, temperature, d=None, grading=0.0, budget=math.inf):
  """(L_i2t, L_t2i) of soft-target InfoNCE; `grading` g > 0 grades positive targets by d."""
  P = P.astype(bool)
  pos_logit = None if d is None else grading * d.astype(S.dtype)[None, :]
  i2t = row_infonce(S, P, r, temperature, pos_logit, budget) / S.shape[0]
  t2i = row_infonce(S.T, P.T, r_prime.T, temperature, budget=budget) / S.shape[1]
  return i2t, t2i


@jax.jit
def infonce_loss(S: jax.Array, P: jax.Array, r: jax.Array,
                 r_prime: jax.Array, temperature) -> jax.Array:
  """Soft-target InfoNCE: mean_i CE(softmax(S[i] / τ), Y[i]) + per column.

  Row targets are P + r, column targets P + r', each normalised to sum 1.
  Every row and column must hold a positive. `temperature` may be traced.
  """
  i2t, t2i = _infonce_terms(S, P, r, r_prime, temperature)
  return i2t + t2i


def _triplet_terms(S, P, r, r_prime, margin, max_violation):
  """(L_i2t, L_t2i) of the triplet loss, each summed over positives (i, p)."""
  P = P.astype(bool)
  b, bk = S.shape
  k = _captions_per_image(S)
  # i2t, rows i of S: (1 - r[i, n]) [α + S[i, n] - S[i, p]]+, max over n.
  i2t = row_hardest(S, P, 1.0 - r, jnp.arange(b) * k, k, margin, max_violation)
  # t2i, rows p of S.T: (1 - r'[j, p]) [α + S[j, p] - S[i, p]]+, max over j.
  t2i = row_hardest(S.T, P.T, (1.0 - r_prime).T, jnp.arange(bk) // k, 1, margin,
                    max_violation)
  return i2t, t2i


@functools.partial(jax.jit, static_argnames="max_violation")
def triplet_loss(S: jax.Array, P: jax.Array, r: jax.Array,
                 r_prime: jax.Array, margin, max_violation: bool) -> jax.Array:
  """Relaxed triplet loss with margin α, summed over positives (as in VSE).

  For each positive (i, p): max over negatives n of row i of
  (1 - r[i, n]) [α + S[i, n] - S[i, p]]+, plus max over negative images j of
  column p of (1 - r'[j, p]) [α + S[j, p] - S[i, p]]+. `max_violation=False`
  sums over negatives instead. With r = r' = 0 and K = 1 this is
  VSE-infinity's ContrastiveLoss.
  """
  i2t, t2i = _triplet_terms(S, P, r, r_prime, margin, max_violation)
  return i2t + t2i


def _ordering_terms(S, P, d, gamma, min_gap):
  """(mean hinge over eligible pairs, number of eligible pairs)."""
  k = _captions_per_image(S)
  total, count = row_ordering(S, P.astype(bool), d, jnp.arange(S.shape[0]) * k, k, gamma,
                              min_gap)
  return total / jnp.maximum(count, 1).astype(S.dtype), count


@jax.jit
def ordering_loss(S: jax.Array, P: jax.Array, d: jax.Array, gamma,
                  min_gap) -> jax.Array:
  """Generic-to-specific ordering: mean [γ (d[b]-d[a]) - (S[i,b] - S[i,a])]+.

  Over every image i and pair (a, b) of its positives with d[b] - d[a] > δ;
  0 when there is no such pair.
  """
  return _ordering_terms(S, P, d, gamma, min_gap)[0]


@jax.jit
def ramp(step, warmup_steps) -> jax.Array:
  """Linear warm-up factor min(1, step / warmup_steps); 1 when warmup is 0.

  In the default float type: float32, or float64 under `jax_enable_x64`.
  """
  step = jnp.asarray(step, float)
  warmup = jnp.asarray(warmup_steps, float)
  return jnp.where(warmup > 0,
                   jnp.clip(step / jnp.maximum(warmup, 1.0), 0.0, 1.0), 1.0)


@functools.partial(jax.jit, static_argnames=("matching", "max_violation", "sum_violation_steps",
                                             "target_grading"))
def objective(img: jax.Array, txt: jax.Array, img_ids: jax.Array,
              d: jax.Array, *, matching: str, temperature, margin,
              max_violation: bool, beta, relax_temp, order_weight, order_gamma,
              order_min_gap, step, relax_warmup_steps,
              sum_violation_steps=0, relax_budget=math.inf, target_grading=0.0
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total L = L_match + λ s L_ord (s = B for 'triplet', 1 for 'infonce').

  Args:
    img: L2-normalised image embeddings (B, D).
    txt: L2-normalised caption embeddings (B*K, D), image-major.
    img_ids: (B,) integer image ids; equal ids are the same image.
    d: (B*K,) descriptiveness of the captions.
    matching: 'infonce' or 'triplet' (static).
    temperature: τ of 'infonce' (may be traced, e.g. learnable).
    margin: α of 'triplet'.
    max_violation: 'triplet' takes the hardest negative, else sums (static).
    beta: β, relaxation strength after warm-up (0 switches it off).
    relax_temp: τr.
    order_weight: λ (0 switches the ordering term off).
    order_gamma: γ, ordering margin per unit of descriptiveness gap.
    order_min_gap: δ, smallest gap d[b] - d[a] that forms a pair.
    step: training step, for the warm-up of β.
    relax_warmup_steps: steps over which β rises linearly from 0.
    sum_violation_steps: with `max_violation`, the triplet loss sums over
      negatives for steps < this before taking the hardest (VSE-infinity's
      first-epoch warm-up); 0 takes the hardest from the start.
    relax_budget: ρ, 'infonce': a row's (column's) relaxed target mass is
      scaled down to at most ρ times its positive mass (inf: no cap).
    target_grading: g (static), 'infonce': image->text targets of an image's
      captions ∝ exp(g d) (0: equal).

  Returns:
    (L, terms): terms holds scalars 'loss', 'match', 'i2t', 't2i', 'order',
    'order_pairs', 'beta' (after warm-up), 'relax_i2t' and 'relax_t2i' (mean r
    and r' over negatives), 'pos_sim' and 'neg_sim' (mean S).
  """
  if matching not in MATCHING:
    raise ValueError(f"matching={matching!r}; expected one of {MATCHING}")
  b, bk = img.shape[0], txt.shape[0]
  if bk % b or img_ids.shape != (b,) or d.shape != (bk,):
    raise ValueError(
        f"shapes img {img.shape}, txt {txt.shape}, img_ids {img_ids.shape}, "
        f"d {d.shape}: expected (B, D), (B*K, D), (B,), (B*K,)")
  S = similarity(img, txt)
  P = positive_mask(img_ids, bk // b)
  beta_eff = beta * ramp(step, relax_warmup_steps)
  r, r_prime = relaxation(S, P, d, beta_eff, relax_temp)
  if matching == "infonce":
    i2t, t2i = _infonce_terms(S, P, r, r_prime, temperature, d if target_grading else None,
                              target_grading, relax_budget)
    scale = 1.0
  else:
    terms = lambda hardest: _triplet_terms(S, P, r, r_prime, margin, hardest)
    if max_violation and sum_violation_steps:
      i2t, t2i = jax.lax.cond(step < sum_violation_steps,
                              lambda: terms(False), lambda: terms(True))
    else:
      i2t, t2i = terms(max_violation)
    scale = float(b)
  order, pairs = _ordering_terms(S, P, d, order_gamma, order_min_gap)
  match = i2t + t2i
  loss = match + order_weight * scale * order  # L = L_match + λ s L_ord
  pos = P.astype(S.dtype)
  num_neg = jnp.maximum(jnp.sum(1.0 - pos), 1.0)
  terms = {
      "loss": loss,
      "match": match,
      "i2t": i2t,
      "t2i": t2i,
      "order": order,
      "order_pairs": pairs,
      "beta": jnp.asarray(beta_eff, jnp.float32),
      "relax_i2t": jnp.sum(r) / num_neg,
      "relax_t2i": jnp.sum(r_prime) / num_neg,
      "pos_sim": jax.lax.stop_gradient(jnp.sum(S * pos) / jnp.sum(pos)),
      "neg_sim": jax.lax.stop_gradient(jnp.sum(S * (1.0 - pos)) / num_neg),
  }
  return loss, terms
