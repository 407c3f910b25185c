"""Tests for ditm_jax.losses against NumPy loops written from DESIGN §3."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ditm_jax import losses

TOL = dict(rtol=1e-5, atol=1e-5)


# ---- Brute force: explicit loops written from the text of DESIGN §3. ----


def sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def ref_positive_mask(ids, k):
  b = len(ids)
  return np.array([[ids[i] == ids[n // k] for n in range(b * k)]
                   for i in range(b)])


def ref_relaxation(S, P, d, beta, temp):
  b, bk = S.shape
  k = bk // b
  r, r_prime = np.zeros((b, bk)), np.zeros((b, bk))
  for i in range(b):
    mean_pos = np.mean([S[i, n] for n in range(bk) if P[i, n]])
    for n in range(bk):
      if not P[i, n]:
        r[i, n] = beta * (1 - d[n]) * sigmoid((S[i, n] - mean_pos) / temp)
        r_prime[i, n] = beta * (1 - d[n]) * sigmoid(
            (S[i, n] - S[n // k, n]) / temp)
  return r, r_prime


def ref_infonce(S, P, r, r_prime, tau):
  b, bk = S.shape
  i2t = 0.0
  for i in range(b):
    y = [P[i, n] + r[i, n] for n in range(bk)]
    lse = math.log(sum(math.exp(S[i, n] / tau) for n in range(bk)))
    i2t += -sum(y[n] / sum(y) * (S[i, n] / tau - lse) for n in range(bk))
  t2i = 0.0
  for n in range(bk):
    y = [P[i, n] + r_prime[i, n] for i in range(b)]
    lse = math.log(sum(math.exp(S[i, n] / tau) for i in range(b)))
    t2i += -sum(y[i] / sum(y) * (S[i, n] / tau - lse) for i in range(b))
  return i2t / b, t2i / bk


def ref_targets(pos, r, weights, budget):
  """Targets of one row: positives weighted (summing to their count), r capped, normalised."""
  count = sum(pos)
  total_w = sum(w for w, p in zip(weights, pos) if p)
  y_pos = [count * w / total_w if p else 0.0 for w, p in zip(weights, pos)]
  mass = sum(r)
  scale = min(1.0, budget * count / mass) if mass > 0 else 1.0
  y = [a + scale * b for a, b in zip(y_pos, r)]
  return [v / sum(y) for v in y]


def ref_infonce_graded(S, P, r, r_prime, tau, d, grading, budget):
  """InfoNCE with image->text targets ∝ exp(g d) on positives and the relaxation budget ρ."""
  b, bk = S.shape
  i2t = t2i = 0.0
  for i in range(b):
    y = ref_targets(P[i], r[i], [math.exp(grading * d[n]) for n in range(bk)], budget)
    lse = math.log(sum(math.exp(S[i, n] / tau) for n in range(bk)))
    i2t -= sum(y[n] * (S[i, n] / tau - lse) for n in range(bk))
  for n in range(bk):
    y = ref_targets(P[:, n], r_prime[:, n], [1.0] * b, budget)
    lse = math.log(sum(math.exp(S[i, n] / tau) for i in range(b)))
    t2i -= sum(y[i] * (S[i, n] / tau - lse) for i in range(b))
  return i2t / b, t2i / bk


def ref_triplet(S, P, r, r_prime, margin, max_violation):
  b, bk = S.shape
  reduce = (lambda v: max(v) if v else 0.0) if max_violation else sum
  i2t = t2i = 0.0
  for i in range(b):
    for p in range(bk):
      if not P[i, p]:
        continue
      i2t += reduce([(1 - r[i, n]) * max(0.0, margin + S[i, n] - S[i, p])
                     for n in range(bk) if not P[i, n]])
      t2i += reduce([(1 - r_prime[j, p]) * max(0.0, margin + S[j, p] - S[i, p])
                     for j in range(b) if not P[j, p]])
  return i2t, t2i


def ref_ordering(S, P, d, gamma, min_gap):
  b, bk = S.shape
  hinges = []
  for i in range(b):
    for a in range(bk):
      for c in range(bk):  # c is the text's b.
        if P[i, a] and P[i, c] and d[c] - d[a] > min_gap:
          hinges.append(max(0.0, gamma * (d[c] - d[a]) - (S[i, c] - S[i, a])))
  return (sum(hinges) / len(hinges) if hinges else 0.0), len(hinges)


def vse_contrastive_loss(scores, margin=0.2):
  """VSE-infinity's ContrastiveLoss(max_violation=True), rewritten in NumPy."""
  diagonal = np.diag(scores)
  cost_s = np.clip(margin + scores - diagonal[:, None], 0, None)  # caption negs
  cost_im = np.clip(margin + scores - diagonal[None, :], 0, None)  # image negs
  eye = np.eye(len(scores), dtype=bool)
  cost_s[eye] = 0
  cost_im[eye] = 0
  return cost_s.max(1).sum() + cost_im.max(0).sum()


# ---- Random batches. ----


def make_batch(ids, k, seed, dim=8, spread=1.0):
  """L2-normalised float32 embeddings, image-major captions, random d."""
  rng = np.random.default_rng(seed)
  b = len(ids)
  img = rng.standard_normal((b, dim))
  txt = np.repeat(img, k, 0) * 0.6 + spread * rng.standard_normal((b * k, dim))
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  d = rng.uniform(0, 1, b * k)
  return (img.astype(np.float32), txt.astype(np.float32),
          np.asarray(ids, np.int32), d.astype(np.float32))


BATCHES = {
    "K1": ([3, 1, 4, 5, 9], 1),
    "K2": ([3, 1, 4, 5], 2),
    "K2_duplicate": ([7, 3, 7, 5], 2),
    "K3_duplicates": ([2, 2, 8, 2], 3),
}


def batch_arrays(name, seed=0):
  ids, k = BATCHES[name]
  img, txt, ids, d = make_batch(ids, k, seed)
  S = np.asarray(losses.similarity(img, txt))
  P = ref_positive_mask(ids, k)
  return img, txt, ids, d, k, S, P


@pytest.mark.parametrize("name", BATCHES)
def test_similarity_and_positive_mask(name):
  img, txt, ids, _, k, S, P = batch_arrays(name)
  assert S.shape == (len(ids), len(ids) * k) and S.dtype == np.float32
  np.testing.assert_allclose(S, img.astype(np.float64) @ txt.T, **TOL)
  got = losses.positive_mask(jnp.asarray(ids), k)
  np.testing.assert_array_equal(np.asarray(got), P)


@pytest.mark.parametrize("name", BATCHES)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.5])
def test_relaxation(name, beta):
  *_, S, P = batch_arrays(name)
  d = np.random.default_rng(1).uniform(0, 1, S.shape[1]).astype(np.float32)
  r, r_prime = losses.relaxation(S, P, d, beta, 0.1)
  ref_r, ref_r_prime = ref_relaxation(S.astype(np.float64), P, d, beta, 0.1)
  np.testing.assert_allclose(r, ref_r, **TOL)
  np.testing.assert_allclose(r_prime, ref_r_prime, **TOL)
  assert np.all(np.asarray(r)[P] == 0) and np.all(np.asarray(r_prime)[P] == 0)


def test_relaxation_is_stop_gradient():
  *_, S, P = batch_arrays("K2")
  d = np.full(S.shape[1], 0.3, np.float32)
  grad = jax.grad(lambda s: jnp.sum(sum(losses.relaxation(s, P, d, 0.5, 0.1))))
  np.testing.assert_array_equal(grad(jnp.asarray(S)), 0.0)


@pytest.mark.parametrize("name", BATCHES)
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_infonce(name, beta):
  *_, S, P = batch_arrays(name)
  d = np.random.default_rng(2).uniform(0, 1, S.shape[1])
  r, r_prime = ref_relaxation(S.astype(np.float64), P, d, beta, 0.1)
  i2t, t2i = ref_infonce(S.astype(np.float64), P, r, r_prime, 0.07)
  got = losses.infonce_loss(S, P, r.astype(np.float32),
                            r_prime.astype(np.float32), 0.07)
  np.testing.assert_allclose(got, i2t + t2i, **TOL)


@pytest.mark.parametrize("name", BATCHES)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.5])
@pytest.mark.parametrize("max_violation", [True, False])
def test_triplet(name, beta, max_violation):
  *_, S, P = batch_arrays(name)
  d = np.random.default_rng(3).uniform(0, 1, S.shape[1])
  r, r_prime = ref_relaxation(S.astype(np.float64), P, d, beta, 0.1)
  i2t, t2i = ref_triplet(S.astype(np.float64), P, r, r_prime, 0.2,
                         max_violation)
  got = losses.triplet_loss(S, P, r.astype(np.float32),
                            r_prime.astype(np.float32), 0.2, max_violation)
  assert i2t != 0 and t2i != 0  # β > 1 can make (1 - r) negative.
  np.testing.assert_allclose(got, i2t + t2i, **TOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_beta0_k1_is_vse_contrastive_loss(seed):
  img, txt, ids, d = make_batch(np.arange(8), 1, seed)
  S = np.asarray(losses.similarity(img, txt))
  P = losses.positive_mask(jnp.asarray(ids), 1)
  zeros = np.zeros_like(S)
  expected = vse_contrastive_loss(S.astype(np.float64))
  np.testing.assert_allclose(
      losses.triplet_loss(S, P, zeros, zeros, 0.2, True), expected, **TOL)
  loss, _ = losses.objective(
      img, txt, ids, d, matching="triplet", temperature=0.05, margin=0.2,
      max_violation=True, beta=0.0, relax_temp=0.05, order_weight=0.0,
      order_gamma=0.2, order_min_gap=0.05, step=0, relax_warmup_steps=0)
  np.testing.assert_allclose(loss, expected, **TOL)


@pytest.mark.parametrize("name", BATCHES)
@pytest.mark.parametrize("min_gap", [0.0, 0.05, 0.3])
def test_ordering(name, min_gap):
  *_, S, P = batch_arrays(name)
  d = np.random.default_rng(4).uniform(0, 1, S.shape[1]).astype(np.float32)
  expected, count = ref_ordering(S.astype(np.float64), P,
                                 d.astype(np.float64), 0.2, min_gap)
  got = losses.ordering_loss(S, P, d, 0.2, min_gap)
  if BATCHES[name][1] == 1 and len(set(BATCHES[name][0])) == len(S):
    assert count == 0 and float(got) == 0.0  # K = 1: no pairs.
  else:
    assert count > 0
  np.testing.assert_allclose(got, expected, **TOL)


def test_ordering_without_eligible_pairs_is_zero():
  *_, S, P = batch_arrays("K2")
  d = np.full(S.shape[1], 0.5, np.float32)  # Equal d: no gap exceeds δ.
  assert float(losses.ordering_loss(S, P, d, 0.2, 0.05)) == 0.0
  grad = jax.grad(lambda s: losses.ordering_loss(s, P, d, 0.2, 0.05))(S)
  np.testing.assert_array_equal(grad, 0.0)


def test_hand_computed_two_images():
  # S = [[0.6, 0.5], [0.7, 0.4]], K = 1, α = 0.2, β = 0:
  #   i2t: [0.2 + 0.5 - 0.6]+ = 0.1 and [0.2 + 0.7 - 0.4]+ = 0.5;
  #   t2i: [0.2 + 0.7 - 0.6]+ = 0.3 and [0.2 + 0.5 - 0.4]+ = 0.3; sum 1.2.
  # InfoNCE, τ = 1: rows log(1 + e^-0.1) = 0.6443967 and log(1 + e^0.3)
  #   = 0.8543552, mean 0.7493760; columns log(1 + e^0.1) = 0.7443967 twice;
  #   sum 1.4937726.
  # Relaxation, β = 0.5, d = [0.2, 0.6], τr = 0.1:
  #   r[0, 1] = 0.5 * 0.4 * σ((0.5 - 0.6) / 0.1) = 0.2 σ(-1) = 0.0537883,
  #   r[1, 0] = 0.5 * 0.8 * σ((0.7 - 0.4) / 0.1) = 0.4 σ(3) = 0.3810297,
  #   r'[1, 0] = 0.4 σ((0.7 - 0.6) / 0.1) = 0.4 σ(1) = 0.2924234,
  #   r'[0, 1] = 0.2 σ((0.5 - 0.4) / 0.1) = 0.2 σ(1) = 0.1462117.
  #   Relaxed triplet: 0.1 (1 - 0.0537883) + 0.5 (1 - 0.3810297)
  #   + 0.3 (1 - 0.2924234) + 0.3 (1 - 0.1462117) = 0.8725158.
  S = jnp.array([[0.6, 0.5], [0.7, 0.4]])
  P = losses.positive_mask(jnp.array([0, 1]), 1)
  zeros = jnp.zeros_like(S)
  np.testing.assert_allclose(
      losses.triplet_loss(S, P, zeros, zeros, 0.2, True), 1.2, rtol=1e-6)
  np.testing.assert_allclose(
      losses.infonce_loss(S, P, zeros, zeros, 1.0), 1.4937726, rtol=1e-6)
  r, r_prime = losses.relaxation(S, P, jnp.array([0.2, 0.6]), 0.5, 0.1)
  np.testing.assert_allclose(r, [[0, 0.0537883], [0.3810297, 0]], atol=1e-7)
  np.testing.assert_allclose(r_prime, [[0, 0.1462117], [0.2924234, 0]],
                             atol=1e-7)
  np.testing.assert_allclose(
      losses.triplet_loss(S, P, r, r_prime, 0.2, True), 0.8725158, rtol=1e-6)
  # Ordering, one image with K = 2, S = [[0.5, 0.55]], d = [0.2, 0.9], γ = 0.2:
  # the pair (a=0, b=1) has gap 0.7 > δ: [0.2 * 0.7 - 0.05]+ = 0.09.
  S = jnp.array([[0.5, 0.55]])
  P = losses.positive_mask(jnp.array([0]), 2)
  d = jnp.array([0.2, 0.9])
  np.testing.assert_allclose(losses.ordering_loss(S, P, d, 0.2, 0.05), 0.09,
                             rtol=1e-6)
  assert float(losses.ordering_loss(S, P, d, 0.2, 0.8)) == 0.0


def test_ramp():
  assert [float(losses.ramp(s, 100)) for s in (-5, 0, 25, 100, 400)] == [
      0.0, 0.0, 0.25, 1.0, 1.0]
  assert float(losses.ramp(0, 0)) == 1.0 and float(losses.ramp(7, 0)) == 1.0


def loss_kwargs(matching, **overrides):
  kwargs = dict(matching=matching, temperature=0.07, margin=0.2,
                max_violation=True, beta=0.5, relax_temp=0.1, order_weight=1.0,
                order_gamma=0.2, order_min_gap=0.05, step=50,
                relax_warmup_steps=100)
  kwargs.update(overrides)
  return kwargs


@pytest.mark.parametrize("matching", losses.MATCHING)
@pytest.mark.parametrize("name", ["K1", "K2_duplicate"])
def test_objective_combines_terms(matching, name):
  img, txt, ids, d, _, S, P = batch_arrays(name)
  kwargs = loss_kwargs(matching)
  loss, terms = losses.objective(img, txt, ids, d, **kwargs)
  S64 = S.astype(np.float64)
  r, r_prime = ref_relaxation(S64, P, d, 0.25, 0.1)  # β ramped to 50 / 100.
  if matching == "infonce":
    i2t, t2i = ref_infonce(S64, P, r, r_prime, 0.07)
    scale = 1
  else:
    i2t, t2i = ref_triplet(S64, P, r, r_prime, 0.2, True)
    scale = len(ids)
  order, pairs = ref_ordering(S64, P, d, 0.2, 0.05)
  np.testing.assert_allclose(loss, i2t + t2i + scale * order, **TOL)
  np.testing.assert_allclose(terms["loss"], loss)
  np.testing.assert_allclose(terms["i2t"], i2t, **TOL)
  np.testing.assert_allclose(terms["t2i"], t2i, **TOL)
  np.testing.assert_allclose(terms["match"], i2t + t2i, **TOL)
  np.testing.assert_allclose(terms["order"], order, **TOL)
  assert int(terms["order_pairs"]) == pairs
  np.testing.assert_allclose(terms["beta"], 0.25)
  np.testing.assert_allclose(terms["relax_i2t"], r[~P].mean(), **TOL)
  np.testing.assert_allclose(terms["relax_t2i"], r_prime[~P].mean(), **TOL)
  np.testing.assert_allclose(terms["pos_sim"], S64[P].mean(), **TOL)
  np.testing.assert_allclose(terms["neg_sim"], S64[~P].mean(), **TOL)


def _grads(matching, img, txt, ids, d, **overrides):
  def f(img, txt, temperature):
    kwargs = loss_kwargs(matching, temperature=temperature, **overrides)
    return losses.objective(img, txt, ids, d, **kwargs)[0]
  return jax.grad(f, argnums=(0, 1, 2))(img, txt, jnp.float32(0.07))


@pytest.mark.parametrize("matching", losses.MATCHING)
@pytest.mark.parametrize("max_violation", [True, False])
def test_gradients_finite(matching, max_violation):
  img, txt, ids, d, *_ = batch_arrays("K2_duplicate")
  grads = _grads(matching, img, txt, ids, d, max_violation=max_violation)
  for g in grads:
    assert np.all(np.isfinite(g))
  assert np.any(np.asarray(grads[0]) != 0) and np.any(np.asarray(grads[1]) != 0)
  # Identical embeddings: every similarity ties.
  same = np.ones((4, 8), np.float32) / np.sqrt(8)
  grads = _grads(matching, same, np.repeat(same, 2, 0), ids, d,
                 max_violation=max_violation)
  for g in grads:
    assert np.all(np.isfinite(g))
  # One image repeated: no negatives at all, the max runs over empty sets.
  grads = _grads(matching, img, txt, np.zeros(4, np.int32), d,
                 max_violation=max_violation)
  for g in grads:
    assert np.all(np.isfinite(g))


def test_no_negatives_gives_zero_triplet():
  img, txt, _, d, *_ = batch_arrays("K2")
  loss, terms = losses.objective(img, txt, np.zeros(4, np.int32), d,
                                 **loss_kwargs("triplet", order_weight=0.0))
  assert float(loss) == 0.0 and float(terms["relax_i2t"]) == 0.0


@pytest.mark.parametrize("matching", losses.MATCHING)
def test_inside_jit_with_traced_temperature_and_step(matching):
  img, txt, ids, d, *_ = batch_arrays("K2_duplicate")
  kwargs = loss_kwargs(matching)

  @jax.jit
  def step_fn(img, txt, ids, d, temperature, step):
    return losses.objective(img, txt, ids, d, **dict(
        kwargs, temperature=temperature, step=step))

  for step in (0, 50, 200):
    eager = losses.objective(img, txt, ids, d, **dict(kwargs, step=step))
    jitted = step_fn(img, txt, ids, d, jnp.float32(0.07), step)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL),
                 eager, jitted)


def test_objective_rejects_bad_input():
  img, txt, ids, d, *_ = batch_arrays("K2")
  with pytest.raises(ValueError, match="matching"):
    losses.objective(img, txt, ids, d, **loss_kwargs("softmax"))
  with pytest.raises(ValueError, match="shapes"):
    losses.objective(img, txt[:-1], ids, d[:-1], **loss_kwargs("triplet"))
  with pytest.raises(ValueError, match="shapes"):
    losses.objective(img, txt, ids, d[:-1], **loss_kwargs("triplet"))


@pytest.mark.parametrize("name", ["K1", "K2", "K2_duplicate", "K3_duplicates"])
@pytest.mark.parametrize("grading, budget", [(0.0, math.inf), (4.0, math.inf), (0.0, 0.05),
                                             (4.0, 0.05), (2.0, 10.0)])
def test_graded_targets_and_relaxation_budget(name, grading, budget):
  img, txt, ids, d, _, S, P = batch_arrays(name)
  kwargs = loss_kwargs("infonce", beta=1.0, step=100, target_grading=grading,
                       relax_budget=budget)
  _, terms = losses.objective(img, txt, ids, d, **kwargs)
  S64, d64 = S.astype(np.float64), d.astype(np.float64)
  r, r_prime = ref_relaxation(S64, P, d64, 1.0, 0.1)
  i2t, t2i = ref_infonce_graded(S64, P, r, r_prime, 0.07, d64, grading, budget)
  np.testing.assert_allclose(terms["i2t"], i2t, **TOL)
  np.testing.assert_allclose(terms["t2i"], t2i, **TOL)
  plain = ref_infonce(S64, P, r, r_prime, 0.07)
  if (grading, budget) == (0.0, math.inf):  # both off: DESIGN §3's soft-target InfoNCE
    np.testing.assert_allclose((terms["i2t"], terms["t2i"]), plain, **TOL)
  elif budget < 1:  # a binding budget changes both directions
    assert abs(t2i - plain[1]) > 1e-3 and abs(i2t - plain[0]) > 1e-3


def test_graded_targets_order_an_images_captions():
  """The optimum of the graded targets puts τ g (d_b - d_a) between two captions' logits."""
  d = jnp.array([0.2, 0.7])
  P = losses.positive_mask(jnp.array([0]), 2)
  tau, g = 0.05, 4.0

  def loss(s):
    S = jnp.stack([s, jnp.zeros(())])[None, :]  # S[0] = (s, 0): caption 0 vs caption 1
    i2t, _ = losses._infonce_terms(S, P, jnp.zeros_like(S), jnp.zeros_like(S), tau, d, g)
    return i2t
  s = jnp.linspace(-0.3, 0.3, 6001)
  best = float(s[jnp.argmin(jax.vmap(loss)(s))])
  assert best == pytest.approx(-tau * g * 0.5, abs=1e-3)  # S[0,0] - S[0,1] = -0.1
