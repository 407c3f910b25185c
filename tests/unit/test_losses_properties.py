"""Property tests of the objective (DESIGN §3) on random batches, in float32 and float64.

Hypothesis draws a batch (B images, K captions each, image ids with duplicates, identical
embeddings, equal descriptiveness, β and λ at 0 or not, random margins and temperatures);
every public loss function is compared with the brute-force loops of test_losses.py, values
and gradients must be finite, and float64 inputs must be computed in float64 (under
`jax_enable_x64`, to float64 precision).
"""
import functools

import jax
import jax.numpy as jnp
from hypothesis import example, given, settings, strategies as st
import numpy as np
import pytest

from ditm_jax import losses
from tests.unit.test_losses import (make_batch, ref_infonce, ref_ordering, ref_positive_mask,
                               ref_relaxation, ref_triplet)

# (B, K) drawn from a few shapes, each one compilation per dtype; the values vary freely.
SHAPES = [(1, 1), (1, 5), (3, 2), (4, 5)]
# The same examples every run; `EDGES` below run first.
PROFILE = settings(max_examples=30, deadline=None, derandomize=True, database=None)
TOL = {np.float32: dict(rtol=2e-4, atol=2e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}
SCALARS = ("beta", "relax_temp", "temperature", "margin", "order_weight", "gamma", "min_gap")
# The objective's three matching losses: (matching, max_violation).
MATCHINGS = (("infonce", True), ("triplet", True), ("triplet", False))


@st.composite
def batches(draw):
  b, k = draw(st.sampled_from(SHAPES))
  zero_or = lambda hi: st.one_of(st.just(0.0), st.floats(0.0, hi))
  return dict(ids=draw(st.lists(st.integers(0, b), min_size=b, max_size=b)),  # duplicates
              k=k, seed=draw(st.integers(0, 2**16)), identical=draw(st.booleans()),
              equal_d=draw(st.booleans()), beta=draw(zero_or(1.5)),
              order_weight=draw(zero_or(2.0)), gamma=draw(st.floats(0.0, 0.5)),
              min_gap=draw(st.floats(0.0, 0.3)), margin=draw(st.floats(0.0, 0.5)),
              temperature=draw(st.floats(0.02, 1.0)), relax_temp=draw(st.floats(0.02, 1.0)))


def edge(ids, k, **overrides):
  """An explicit example: random embeddings and d, β = λ = 0, unless overridden."""
  case = dict(ids=ids, k=k, seed=0, identical=False, equal_d=False, beta=0.0, order_weight=0.0,
              gamma=0.2, min_gap=0.05, margin=0.2, temperature=0.05, relax_temp=0.05)
  return dict(case, **overrides)


EDGES = [
    edge([0], 1),  # B = 1, K = 1: no negatives, no ordering pairs
    edge([0], 5, beta=0.5, order_weight=1.0),  # B = 1, K = 5
    edge([1, 1, 1, 1], 5, beta=0.5, order_weight=1.0),  # one image four times: no negatives
    edge([3, 1, 3], 2, identical=True, beta=0.5, order_weight=1.0),  # every similarity ties
    edge([3, 1, 4, 1], 5, equal_d=True, beta=1.0, order_weight=1.0),  # no ordering pair
    edge([2, 0, 1], 2),  # β = λ = 0: the plain losses
]


def with_edges(test):
  """`test` with every case of EDGES as an explicit example."""
  for case in reversed(EDGES):
    test = example(case=case)(test)
  return test


def arrays(case, dtype):
  """(img, txt, ids, d) of `case` in `dtype`: random or identical embeddings, random or equal d."""
  img, txt, ids, d = make_batch(case["ids"], case["k"], case["seed"])
  if case["identical"]:
    img = np.ones_like(img) / np.sqrt(img.shape[1])
    txt = np.ones_like(txt) / np.sqrt(txt.shape[1])
  if case["equal_d"]:
    d = np.full_like(d, 0.5)
  return img.astype(dtype), txt.astype(dtype), ids, d.astype(dtype)


@functools.partial(jax.jit, static_argnames="k")
def public_functions(img, txt, ids, d, s, k):
  """Every public loss function of the batch, and the objective's value and gradients."""
  S = losses.similarity(img, txt)
  P = losses.positive_mask(ids, k)
  r, r_prime = losses.relaxation(S, P, d, s["beta"], s["relax_temp"])
  out = dict(S=S, P=P, r=r, r_prime=r_prime,
             infonce=losses.infonce_loss(S, P, r, r_prime, s["temperature"]),
             ordering=losses.ordering_loss(S, P, d, s["gamma"], s["min_gap"]))
  for mv in (True, False):
    out[f"triplet_{mv}"] = losses.triplet_loss(S, P, r, r_prime, s["margin"], mv)
  for matching, mv in MATCHINGS:
    def loss(img, txt, temperature):
      return losses.objective(
          img, txt, ids, d, matching=matching, temperature=temperature, margin=s["margin"],
          max_violation=mv, beta=s["beta"], relax_temp=s["relax_temp"],
          order_weight=s["order_weight"], order_gamma=s["gamma"], order_min_gap=s["min_gap"],
          step=10, relax_warmup_steps=0)
    (value, terms), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(
        img, txt, s["temperature"])
    out[f"objective_{matching}_{mv}"] = (value, terms["match"], grads)
  return out


def references(S, P, d, case):
  """The brute-force values of test_losses.py, in float64."""
  r, r_prime = ref_relaxation(S, P, d, case["beta"], case["relax_temp"])
  ref = dict(r=r, r_prime=r_prime,
             infonce=sum(ref_infonce(S, P, r, r_prime, case["temperature"])),
             ordering=ref_ordering(S, P, d, case["gamma"], case["min_gap"])[0])
  for mv in (True, False):
    ref[f"triplet_{mv}"] = sum(ref_triplet(S, P, r, r_prime, case["margin"], mv))
  for matching, mv in MATCHINGS:
    match = ref["infonce"] if matching == "infonce" else ref[f"triplet_{mv}"]
    scale = 1 if matching == "infonce" else len(S)  # s of L = L_match + λ s L_ord
    ref[f"objective_{matching}_{mv}"] = (match + case["order_weight"] * scale * ref["ordering"],
                                         match)
  return ref


def check(got, expected, dtype, what):
  got = np.asarray(got)
  assert got.dtype == dtype, (what, got.dtype)
  assert np.all(np.isfinite(got)), what
  np.testing.assert_allclose(got, expected, err_msg=what, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@given(case=batches())
@PROFILE
@with_edges
def test_public_functions_match_brute_force(dtype, case):
  with jax.enable_x64(dtype == np.float64):
    img, txt, ids, d = arrays(case, dtype)
    scalars = {name: np.asarray(case[name], dtype) for name in SCALARS}
    got = public_functions(img, txt, ids, d, scalars, k=case["k"])
  P = ref_positive_mask(ids, case["k"])
  np.testing.assert_array_equal(got["P"], P)
  check(got["S"], img.astype(np.float64) @ txt.astype(np.float64).T, dtype, "S")
  S, d = np.asarray(got["S"], np.float64), d.astype(np.float64)
  ref = references(S, P, d, case)
  for name in ("r", "r_prime", "infonce", "ordering", "triplet_True", "triplet_False"):
    check(got[name], ref[name], dtype, name)
  for matching, mv in MATCHINGS:
    name = f"objective_{matching}_{mv}"
    (value, match, grads), (ref_value, ref_match) = got[name], ref[name]
    check(value, ref_value, dtype, name)
    check(match, ref_match, dtype, f"{name} match")
    for g, x in zip(grads, (img, txt, scalars["temperature"])):
      check(g, np.asarray(g, np.float64), dtype, f"{name} gradient")  # dtype and finite
      assert g.shape == np.shape(x)
