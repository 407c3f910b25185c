"""The CPU module: `cpu.Dense` (nn.Dense's parameters and values; gradients against NumPy's
x^T g) and `cpu.keep_freed_memory` (XLA:CPU's per-execution temporaries stop faulting in fresh
pages: the kernel's own page-fault counter, in a fresh process per case)."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ditm_jax import cpu
from ditm_jax import sharding
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


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A jitted function whose 64 MiB temporary (the product) XLA allocates on every call: the page
# faults of each of 19 calls after the first.
CHILD = """
import resource
from ditm_jax import cpu
kept = cpu.keep_freed_memory()
import jax, jax.numpy as jnp
a, b = jnp.ones((4096, 64)), jnp.ones((64, 4096))
f = jax.jit(lambda a, b: jnp.max(jnp.sin(a @ b)))
f(a, b).block_until_ready()
faults = []
for _ in range(19):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(a, b).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, *faults)
"""


def _faults(keep):
  env = dict(os.environ, JAX_PLATFORMS="cpu", DITM_KEEP_FREED_MEMORY="1" if keep else "0",
             PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                       check=True, timeout=300).stdout.split()
  return out[0] == "True", [int(n) for n in out[1:]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_kept_memory_stops_per_call_page_faults():
  kept, faults_kept = _faults(True)
  not_kept, faults_default = _faults(False)
  assert kept and not not_kept
  # 64 MiB is 16,384 pages of 4 KiB: glibc's defaults fault them in on every call. Kept, a
  # call faults only where the heap first grows into untouched pages (in 0-5 of the 19 calls
  # in 6 runs, depending on when the previous call's block was freed).
  assert sum(n > 8_000 for n in faults_default) >= 17, faults_default
  assert sum(faults_kept) < sum(faults_default) / 2, (faults_kept, faults_default)
  assert sum(faults_kept[-5:]) < 20_000, faults_kept  # settled: at most one late growth


def test_skipped_for_accelerators_and_when_asked(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert not sharding.expects_cpu_backend()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert sharding.expects_cpu_backend()
  monkeypatch.setenv("DITM_KEEP_FREED_MEMORY", "0")
  assert not cpu.keep_freed_memory()
