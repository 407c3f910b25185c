"""GPO's rank-count pooling equals sorting each dimension (NumPy) and its gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ditm_jax.models import gpo


def _case(seed, b=5, n=9, d=7, ties=False):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((b, n, d)).astype(np.float32)
  if ties:  # few distinct values: many exact ties within a set
    x = np.round(x).astype(np.float32)
  lengths = rng.integers(1, n + 1, b)
  lengths[0] = n
  mask = np.arange(n)[None, :] < lengths[:, None]
  if seed % 2:  # masks that are not a prefix (dropped regions)
    mask = np.stack([rng.permutation(m) for m in mask])
  w = rng.random((b, n)).astype(np.float32)
  w = np.where(np.arange(n)[None, :] < lengths[:, None], w, 0).astype(np.float32)
  return x, mask, w


def _numpy_pool(x, mask, w):
  out = np.zeros((x.shape[0], x.shape[2]), np.float64)
  for b in range(x.shape[0]):
    valid = x[b][mask[b]]                      # (length, D)
    ordered = -np.sort(-valid, axis=0)         # descending per dimension
    out[b] = (w[b, :len(valid), None] * ordered).sum(0)
  return out


@pytest.mark.parametrize("seed,ties", [(0, False), (1, False), (2, True), (3, True)])
def test_rank_pool_equals_numpy_sort(seed, ties):
  x, mask, w = _case(seed, ties=ties)
  got = np.asarray(jax.jit(gpo.rank_pool)(x, mask, w))
  np.testing.assert_allclose(got, _numpy_pool(x, mask, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,dtype", [(256, np.uint8), (300, np.int32)])
def test_long_sets_rank_in_a_wide_enough_type(n, dtype):
  x, mask, w = _case(4, b=2, n=n, d=3, ties=True)
  assert gpo.descending_ranks(jnp.asarray(x), jnp.asarray(mask)).dtype == dtype
  got = np.asarray(jax.jit(gpo.rank_pool)(x, mask, w))
  np.testing.assert_allclose(got, _numpy_pool(x, mask, w), rtol=1e-5, atol=1e-5)


def test_ranks_are_a_permutation_with_masked_last():
  x, mask, _ = _case(3, ties=True)
  ranks = np.asarray(gpo.descending_ranks(jnp.asarray(x), jnp.asarray(mask)))
  n = x.shape[1]
  np.testing.assert_array_equal(np.sort(ranks, axis=1),
                                np.broadcast_to(np.arange(n)[None, :, None], ranks.shape))
  lengths = mask.sum(1)
  for b in range(x.shape[0]):
    assert (ranks[b][mask[b]] < lengths[b]).all() and (ranks[b][~mask[b]] >= lengths[b]).all()


@pytest.mark.parametrize("seed,n", [(0, 9), (1, 9), (1, 80)])  # 80: weights gathered
def test_rank_pool_gradients_equal_sort_pool(seed, n):
  x, mask, w = _case(seed, n=n)
  g = np.random.default_rng(9).standard_normal((x.shape[0], x.shape[2])).astype(np.float32)
  grads = lambda f: jax.jit(jax.grad(lambda a, b: jnp.sum(f(a, mask, b) * g), argnums=(0, 1)))
  got, want = grads(gpo.rank_pool)(x, w), grads(gpo.sort_pool)(x, w)
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_gpo_module_bfloat16_features():
  x, mask, _ = _case(0)
  module = gpo.GPO(dtype=jnp.bfloat16)
  params = module.init(jax.random.key(0), x, mask)["params"]
  got = module.apply({"params": params}, jnp.asarray(x, jnp.bfloat16), mask)
  assert got.dtype == jnp.float32 and got.shape == (x.shape[0], x.shape[2])
  # Same weights applied to the sorted bfloat16 values.
  ref = gpo.GPO(dtype=jnp.float32).apply({"params": params}, np.asarray(
      jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)), mask)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("n", [9, 80])  # a chain of selects up to 64, a gather beyond
def test_weights_by_rank_and_add_by_rank_equal_numpy(n):
  rng = np.random.default_rng(n)
  b, d = 4, 6
  ranks = np.stack([np.stack([rng.permutation(n) for _ in range(d)], 1) for _ in range(b)])
  ranks = ranks.astype(np.uint8)
  w = rng.standard_normal((b, n)).astype(np.float32)
  y = rng.standard_normal((b, n, d)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(gpo._weights_by_rank(w, ranks)),
                                np.take_along_axis(w[:, :, None], ranks.astype(np.int64), 1))
  want = np.zeros((b, n))
  for i in range(b):
    np.add.at(want[i], ranks[i].ravel(), y[i].ravel().astype(np.float64))
  np.testing.assert_allclose(np.asarray(gpo._add_by_rank(y, ranks)), want, rtol=1e-5, atol=1e-5)


def test_gpo_weights_by_set_size_equal_weights_per_set():
  # 12 sets of up to 4 values: the GRU runs once per size 0..4 and each set takes its row;
  # one set at a time, the GRU runs on that set itself. Values and parameter gradients agree.
  x, mask, _ = _case(5, b=12, n=4, d=3)
  mask[3] = False  # an empty set: size 0
  module = gpo.GPO()
  params = module.init(jax.random.key(1), x, mask)["params"]
  loss = lambda p, x, m: jnp.sum(jnp.sin(module.apply({"params": p}, x, m)))
  value_and_grad = jax.jit(jax.value_and_grad(loss))
  got_value, got_grad = value_and_grad(params, x, mask)
  per_set = [value_and_grad(params, x[i:i + 1], mask[i:i + 1]) for i in range(len(x))]
  np.testing.assert_allclose(float(got_value), sum(float(v) for v, _ in per_set), rtol=1e-5)
  want_grad = jax.tree.map(lambda *g: sum(np.asarray(a, np.float64) for a in g),
                           *[g for _, g in per_set])
  for a, b in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-6)
  pooled = module.apply({"params": params}, x, mask)
  np.testing.assert_array_equal(np.asarray(pooled[3]), 0)
