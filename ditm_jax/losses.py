"""The DITM objective (DESIGN §3): pure, jit-able functions of arrays.

A batch holds B images and K captions per image, flattened image-major, so
caption n belongs to image n // K. With S = img @ txt.T of shape (B, B*K):

  P[i, n]  = image_id[i] == image_id[n // K]                   # positives
  r[i, n]  = sg(β (1 - d[n]) σ((S[i, n] - mean_pos_i) / τr))    # i2t
  r'[i, n] = sg(β (1 - d[n]) σ((S[i, n] - S[n // K, n]) / τr))  # t2i
  L        = L_match + λ s L_ord                               # s = B | 1

r and r' are 0 on positives. L_match is soft-target InfoNCE or the
hardest-negative triplet loss; L_ord orders each image's captions by d.
"""
# pylint: disable=invalid-name  # S, P, K: the formula's symbols.
from __future__ import annotations

import functools

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


def _infonce_terms(S, P, r, r_prime, temperature):
  """(L_i2t, L_t2i) of soft-target InfoNCE."""
  pos = P.astype(S.dtype)
  logits = S / temperature
  y = pos + r  # Y = P + r, normalised per row
  y = y / jnp.sum(y, 1, keepdims=True)
  i2t = -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits, 1), 1))
  y = pos + r_prime  # Y' = P + r', normalised per column
  y = y / jnp.sum(y, 0, keepdims=True)
  t2i = -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits, 0), 0))
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


def _masked_reduce(values, mask, axis, max_violation):
  """Max (0 over an empty set) or sum of `values` where `mask`, along axis."""
  if max_violation:
    best = jnp.max(jnp.where(mask, values, -jnp.inf), axis)
    return jnp.where(jnp.any(mask, axis), best, 0.0)
  return jnp.sum(jnp.where(mask, values, 0.0), axis)


def _triplet_terms(S, P, r, r_prime, margin, max_violation):
  """(L_i2t, L_t2i) of the triplet loss, each summed over positives (i, p).

  Memory is O(B (B K)^2): every (i, p) is paired with every n in row i.
  """
  P = P.astype(bool)
  neg = ~P
  # i2t, axes (i, p, n): (1 - r[i, n]) [α + S[i, n] - S[i, p]]+, max over n.
  hinge = jax.nn.relu(margin + S[:, None, :] - S[:, :, None])
  cost = (1.0 - r)[:, None, :] * hinge
  per_pos = _masked_reduce(cost, neg[:, None, :], 2, max_violation)
  i2t = jnp.sum(jnp.where(P, per_pos, 0.0))
  # t2i, axes (i, j, p): (1 - r'[j, p]) [α + S[j, p] - S[i, p]]+, max over j.
  hinge = jax.nn.relu(margin + S[None, :, :] - S[:, None, :])
  cost = (1.0 - r_prime)[None, :, :] * hinge
  per_pos = _masked_reduce(cost, neg[None, :, :], 1, max_violation)
  t2i = jnp.sum(jnp.where(P, per_pos, 0.0))
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
  P = P.astype(bool)
  d = d.astype(S.dtype)
  gap = d[None, :] - d[:, None]  # d[b] - d[a], axes (a, b)
  # Axes (i, a, b): a and b both positives of image i, d[b] - d[a] > δ.
  eligible = P[:, :, None] & P[:, None, :] & (gap > min_gap)[None]
  hinge = jax.nn.relu(gamma * gap[None] - (S[:, None, :] - S[:, :, None]))
  count = jnp.sum(eligible)
  total = jnp.sum(jnp.where(eligible, hinge, 0.0))
  return total / jnp.maximum(count, 1).astype(S.dtype), count


@jax.jit
def ordering_loss(S: jax.Array, P: jax.Array, d: jax.Array, gamma,
                  min_gap) -> jax.Array:
  """Generic-to-specific ordering: mean [γ (d[b]-d[a]) - (S[i,b] - S[i,a])]+.

  Over every image i and pair (a, b) of its positives with d[b] - d[a] > δ;
  0 when there is no such pair. Memory is O(B (B K)^2).
  """
  return _ordering_terms(S, P, d, gamma, min_gap)[0]


@jax.jit
def ramp(step, warmup_steps) -> jax.Array:
  """Linear warm-up factor min(1, step / warmup_steps); 1 when warmup is 0."""
  step = jnp.asarray(step, jnp.float32)
  warmup = jnp.asarray(warmup_steps, jnp.float32)
  return jnp.where(warmup > 0,
                   jnp.clip(step / jnp.maximum(warmup, 1.0), 0.0, 1.0), 1.0)


@functools.partial(jax.jit,
                   static_argnames=("matching", "max_violation"))
def objective(img: jax.Array, txt: jax.Array, img_ids: jax.Array,
              d: jax.Array, *, matching: str, temperature, margin,
              max_violation: bool, beta, relax_temp, order_weight, order_gamma,
              order_min_gap, step, relax_warmup_steps
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
    i2t, t2i = _infonce_terms(S, P, r, r_prime, temperature)
    scale = 1.0
  else:
    i2t, t2i = _triplet_terms(S, P, r, r_prime, margin, max_violation)
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
