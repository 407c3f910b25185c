"""The DITM objective as a `jax.shard_map` over the data axis (DESIGN §3, §6).

Device q of D holds B/D images and their B*K/D captions (image-major batches shard
consistently). It all-gathers the captions (and ids, descriptiveness) and forms its rows
of the similarity matrix; one all-to-all of those rows gives it its columns:

  S_rows = img_q @ txt.T    (B/D, B*K)   its images against every caption: i2t, r, L_ord
  S_cols = S[:, cols_q].T   (B*K/D, B)   its captions against every image: t2i, r'

So every reduction of the objective is local to one block (a row of S for image->text, a
column for text->image; `losses.row_*` on row views), the logits take O(B^2 K / D) memory
per device instead of O(B^2 K), and rows and columns hold the very same values. The
per-device sums are added with one `psum`. In the backward pass the all-to-all sends the
column gradients back to their rows and the all-gather becomes a reduce-scatter of the
caption-embedding gradients. The numbers equal `losses.objective` (the plain global form,
the reference) up to float rounding; `tests/e2e/test_sharded_loss.py` checks values and
gradients.
"""
# pylint: disable=invalid-name  # S, P, K: the formula's symbols.
import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ditm_jax import losses


def _local_terms(img, txt, ids, d, s, *, axis, matching, max_violation, sum_violation_steps,
                 target_grading):
  """Per-device sums of every term (see `objective`), already psum-ed over `axis`."""
  b_local, bk_local = img.shape[0], txt.shape[0]
  k = bk_local // b_local
  gather = functools.partial(jax.lax.all_gather, axis_name=axis, tiled=True)
  all_txt, all_ids, all_d = gather(txt), gather(ids), gather(d)
  first = jax.lax.axis_index(axis) * b_local  # global index of this device's first image

  S_rows = losses.similarity(img, all_txt)  # S[i, :] for local images i
  # S[:, n].T for local captions n: every device's rows of S at this device's columns.
  S_cols = jax.lax.all_to_all(S_rows, axis, split_axis=1, concat_axis=0, tiled=True).T
  P_rows = ids[:, None] == jnp.repeat(all_ids, k)[None, :]
  P_cols = jnp.repeat(ids, k)[:, None] == all_ids[None, :]
  own_rows = (first + jnp.arange(b_local)) * k  # first caption of image i
  own_cols = first + jnp.arange(bk_local) // k  # image n // K of caption n

  # Relaxation, sg: r from rows (mean over the row's positives), r' from columns (S[n//K, n]).
  rows, cols = jax.lax.stop_gradient((S_rows, S_cols))
  pos = P_rows.astype(rows.dtype)
  mean_pos = jnp.sum(rows * pos, 1, keepdims=True) / jnp.maximum(
      jnp.sum(pos, 1, keepdims=True), 1.0)
  r = jnp.where(P_rows, 0.0, s["beta"] * (1.0 - all_d)[None, :] *
                jax.nn.sigmoid((rows - mean_pos) / s["relax_temp"]))
  own_sim = jnp.take_along_axis(cols, own_cols[:, None], 1)
  r_prime = jnp.where(P_cols, 0.0, s["beta"] * (1.0 - d)[:, None] *
                      jax.nn.sigmoid((cols - own_sim) / s["relax_temp"]))
  r, r_prime = jax.lax.stop_gradient((r, r_prime))

  if matching == "infonce":
    pos_logit = target_grading * all_d[None, :] if target_grading else None
    i2t = losses.row_infonce(S_rows, P_rows, r, s["temperature"], pos_logit, s["relax_budget"])
    t2i = losses.row_infonce(S_cols, P_cols, r_prime, s["temperature"],
                             budget=s["relax_budget"])
  else:
    def triplet(hardest):
      return (losses.row_hardest(S_rows, P_rows, 1.0 - r, own_rows, k, s["margin"], hardest),
              losses.row_hardest(S_cols, P_cols, 1.0 - r_prime, own_cols, 1, s["margin"],
                                 hardest))
    if max_violation and sum_violation_steps:
      i2t, t2i = jax.lax.cond(s["step"] < sum_violation_steps,
                              lambda: triplet(False), lambda: triplet(True))
    else:
      i2t, t2i = triplet(max_violation)
  order, pairs = losses.row_ordering(S_rows, P_rows, all_d, own_rows, k, s["order_gamma"],
                                     s["order_min_gap"])
  sums = {
      "i2t": i2t, "t2i": t2i, "order": order, "order_pairs": pairs,
      "pos": jnp.sum(pos), "neg": jnp.sum(1.0 - pos),
      "relax_i2t": jnp.sum(r), "relax_t2i": jnp.sum(r_prime),
      "pos_sim": jnp.sum(rows * pos), "neg_sim": jnp.sum(rows * (1.0 - pos)),
  }
  return jax.lax.psum(sums, axis)


@functools.partial(jax.jit, static_argnames=("mesh", "axis", "matching", "max_violation",
                                             "sum_violation_steps", "target_grading"))
def objective(img: jax.Array, txt: jax.Array, img_ids: jax.Array, d: jax.Array, *,
              mesh: jax.sharding.Mesh, axis: str = "data", matching: str, temperature, margin,
              max_violation: bool, beta, relax_temp, order_weight, order_gamma, order_min_gap,
              step, relax_warmup_steps, sum_violation_steps=0, relax_budget=math.inf,
              target_grading=0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`losses.objective` computed as a shard_map over `mesh` axis `axis` (same arguments).

  The batch (B images, B*K captions) is split over the axis; B must be a multiple of its
  size. Returns the same (L, terms) as `losses.objective`, replicated.
  """
  if matching not in losses.MATCHING:
    raise ValueError(f"matching={matching!r}; expected one of {losses.MATCHING}")
  b, bk = img.shape[0], txt.shape[0]
  if bk % b or img_ids.shape != (b,) or d.shape != (bk,):
    raise ValueError(
        f"shapes img {img.shape}, txt {txt.shape}, img_ids {img_ids.shape}, "
        f"d {d.shape}: expected (B, D), (B*K, D), (B,), (B*K,)")
  devices = mesh.shape[axis]
  if b % devices:
    raise ValueError(f"{b} images do not split over the {devices} devices of mesh axis "
                     f"{axis!r}; use a batch size that is a multiple of {devices}")
  beta_eff = beta * losses.ramp(step, relax_warmup_steps)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  scalars = {"temperature": f32(temperature), "margin": f32(margin), "beta": f32(beta_eff),
             "relax_temp": f32(relax_temp), "order_gamma": f32(order_gamma),
             "order_min_gap": f32(order_min_gap), "step": jnp.asarray(step, jnp.int32),
             "relax_budget": f32(relax_budget)}
  local = functools.partial(_local_terms, axis=axis, matching=matching,
                            max_violation=max_violation, sum_violation_steps=sum_violation_steps,
                            target_grading=target_grading)
  sums = jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P(axis), P(axis), P(axis), P()),
                       out_specs=P())(img, txt, img_ids, d.astype(jnp.float32), scalars)
  if matching == "infonce":
    i2t, t2i, scale = sums["i2t"] / b, sums["t2i"] / bk, 1.0
  else:
    i2t, t2i, scale = sums["i2t"], sums["t2i"], float(b)
  order = sums["order"] / jnp.maximum(sums["order_pairs"], 1).astype(jnp.float32)
  match = i2t + t2i
  loss = match + order_weight * scale * order  # L = L_match + λ s L_ord
  num_neg = jnp.maximum(sums["neg"], 1.0)
  terms = {
      "loss": loss,
      "match": match,
      "i2t": i2t,
      "t2i": t2i,
      "order": order,
      "order_pairs": sums["order_pairs"],
      "beta": jnp.asarray(beta_eff, jnp.float32),
      "relax_i2t": sums["relax_i2t"] / num_neg,
      "relax_t2i": sums["relax_t2i"] / num_neg,
      "pos_sim": jax.lax.stop_gradient(sums["pos_sim"] / sums["pos"]),
      "neg_sim": jax.lax.stop_gradient(sums["neg_sim"] / num_neg),
  }
  return loss, terms
