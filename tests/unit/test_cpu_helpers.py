"""The CPU helpers: `cpu.dense.Dense` (nn.Dense's parameters and values; gradients against
NumPy's x^T g), and when `cpu.memory.keep_freed_memory` applies (its effect on page faults:
tests/e2e/test_host_memory.py)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ditm_jax import cpu as cpu_package
from ditm_jax.cpu import dense as cpu
from ditm_jax.cpu import memory
from ditm_jax.bench import flops


def _numpy_grads(x, kernel, cotangent):
  """Gradients of sum(cotangent * (x @ kernel + bias)), written out in float64."""
  x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
  c2 = cotangent.reshape(-1, cotangent.shape[-1]).astype(np.float64)
  return {"kernel": x2.T @ c2, "bias": c2.sum(0),
          "x": (c2 @ kernel.astype(np.float64).T).reshape(x.shape)}


@pytest.mark.parametrize("backend", ["cpu", "other"])
@pytest.mark.parametrize("in_shape,features", [((37, 24), 8),      # narrower output: g^T copied
                                               ((37, 8), 24),      # wider output: x^T copied
                                               ((37, 16), 16),     # square: autodiff's form
                                               ((2, 19, 24), 8)])  # 3-D input, as ViT's fc
def test_values_and_gradients(monkeypatch, backend, in_shape, features):
  if backend == "other":  # the form other backends take
    monkeypatch.setattr(cpu.jax, "default_backend", lambda: "gpu")
  rng = np.random.default_rng(0)
  x = rng.normal(size=in_shape).astype(np.float32)
  cotangent = rng.normal(size=in_shape[:-1] + (features,)).astype(np.float32)
  params = nn.Dense(features).init(jax.random.key(0), x)["params"]
  params = {"kernel": params["kernel"], "bias": jnp.asarray(rng.normal(size=features),
                                                            jnp.float32)}
  ours = cpu.Dense(features)
  y = ours.apply({"params": params}, x)
  np.testing.assert_array_equal(y, nn.Dense(features).apply({"params": params}, x))

  loss = lambda p, x: jnp.sum(ours.apply({"params": p}, x) * cotangent)
  (d_params, d_x) = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  want = _numpy_grads(x, np.asarray(params["kernel"]), cotangent)
  np.testing.assert_allclose(d_params["kernel"], want["kernel"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(d_params["bias"], want["bias"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(d_x, want["x"], rtol=1e-5, atol=1e-5)


def test_input_gradient_only_where_the_input_is_differentiated():
  x = jnp.ones((40, 12), jnp.float32)
  params = cpu.Dense(6).init(jax.random.key(0), x)
  forward = 2 * 40 * 12 * 6
  params_only = jax.grad(lambda p: jnp.sum(cpu.Dense(6).apply(p, x) ** 2))
  both = jax.grad(lambda p, x: jnp.sum(cpu.Dense(6).apply(p, x) ** 2), argnums=(0, 1))
  assert flops.matmul_flops(params_only, params) == 2 * forward  # forward + weight gradient
  assert flops.matmul_flops(both, params, x) == 3 * forward      # + input gradient


def test_bfloat16_compute_keeps_float32_parameter_gradients():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(64, 32)).astype(np.float32)
  cotangent = rng.normal(size=(64, 8)).astype(np.float32)
  layer = cpu.Dense(8, dtype=jnp.bfloat16)
  params = layer.init(jax.random.key(0), x)["params"]
  grads = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x).astype(jnp.float32)
                                     * cotangent))(params)
  assert grads["kernel"].dtype == jnp.float32
  # bfloat16 operands (8 bits of mantissa): the sum of 64 products to about 1%.
  want = _numpy_grads(x, np.asarray(params["kernel"]), cotangent)["kernel"]
  np.testing.assert_allclose(grads["kernel"], want, rtol=0, atol=0.03 * np.abs(want).max())


def test_other_products_pass_through_unchanged():
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(3, 4, 5)).astype(np.float32), rng.normal(size=(3, 5, 2)).astype(
      np.float32)
  batched = (((2,), (1,)), ((0,), (0,)))
  np.testing.assert_allclose(cpu.dot_general(a, b, batched), np.einsum("bij,bjk->bik", a, b),
                             rtol=1e-5)


@pytest.mark.parametrize("backend,features,copied", [("cpu", 8, True), ("cpu", 24, True),
                                                     ("cpu", 16, False), ("other", 8, False)])
def test_the_copy_runs_on_cpu_for_unequal_widths_only(monkeypatch, backend, features, copied):
  if backend == "other":
    monkeypatch.setattr(cpu.jax, "default_backend", lambda: "gpu")
  x = jnp.ones((37, 16), jnp.float32)
  params = cpu.Dense(features).init(jax.random.key(0), x)
  grad = jax.grad(lambda p: jnp.sum(cpu.Dense(features).apply(p, x) ** 2))
  primitives = {e.primitive.name for e in jax.make_jaxpr(grad)(params).jaxpr.eqns}
  assert ("optimization_barrier" in primitives) == copied


def test_skipped_for_accelerators_and_when_asked(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert not cpu_package.expects_cpu_backend()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert cpu_package.expects_cpu_backend()
  monkeypatch.setenv("DITM_KEEP_FREED_MEMORY", "0")
  assert not memory.keep_freed_memory()
