"""Matmul FLOPs of a JAX program, counted from its jaxpr, and peak rates for utilisation figures.

`matmul_flops(fn, *args)` traces `fn` (e.g. a whole train step: forward, backward and the
optimizer) and adds 2 x M x N x K for every `dot_general` and the same for every convolution,
whatever the nesting: jit, shard_map (times its devices), scan (times its length), custom
derivatives. Element-wise work is not counted, as in the usual model-FLOP-utilisation (MFU)
figures. Two rules keep the count a lower bound of what runs: a `cond` counts its cheapest
branch (the train step's packed/padded choice: the packed one), and a `while` loop, whose trip
count is not static, counts its body once.

`measured_matmul_peak()` times one large square matmul on a device, and `spec_peak()` looks up
the datasheet rate of known accelerators, so `python -m ditm_jax.bench` can state a step's
utilisation against both.
"""
import math
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

# Dense (no sparsity) datasheet peaks in TFLOP/s by device kind prefix and compute dtype.
# float32 matmuls on NVIDIA tensor-core GPUs run as TF32 under JAX's default precision.
SPEC_PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": {"bfloat16": 989.4, "float32": 494.7},  # SXM5
    "NVIDIA H100 PCIe": {"bfloat16": 756.0, "float32": 378.0},
    "NVIDIA H200": {"bfloat16": 989.4, "float32": 494.7},
    "NVIDIA A100-SXM4-80GB": {"bfloat16": 312.0, "float32": 156.0},
    "NVIDIA A100-SXM4-40GB": {"bfloat16": 312.0, "float32": 156.0},
    "TPU v4": {"bfloat16": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0},
    "TPU v5p": {"bfloat16": 459.0},
    "TPU v6 lite": {"bfloat16": 918.0},
}


def _dot_flops(eqn) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
  free = [n for i, n in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
  return 2 * math.prod(lhs) * math.prod(free)


def _conv_flops(eqn) -> int:
  out = eqn.outvars[0].aval.shape
  kernel = eqn.invars[1].aval.shape
  out_features = kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
  return 2 * math.prod(out) * math.prod(kernel) // out_features


def _jaxpr_flops(jaxpr) -> int:
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # ClosedJaxpr -> Jaxpr
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "cond":
      total += min(_jaxpr_flops(b) for b in eqn.params["branches"])
    elif name == "scan":
      total += eqn.params["length"] * _jaxpr_flops(eqn.params["jaxpr"])
    elif name == "while":
      total += _jaxpr_flops(eqn.params["body_jaxpr"])
    elif name == "shard_map":
      total += math.prod(eqn.params["mesh"].shape.values()) * _jaxpr_flops(eqn.params["jaxpr"])
    else:
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          if isinstance(sub, (jax_core.Jaxpr, jax_core.ClosedJaxpr)):
            total += _jaxpr_flops(sub)
  return total


def matmul_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
  """FLOPs of the matmuls and convolutions of `fn(*args, **kwargs)` (see the module doc)."""
  return _jaxpr_flops(jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args))


def measured_matmul_peak(size: int | None = None, dtype: str = "float32",
                         repeats: int = 5, device=None) -> dict[str, Any]:
  """FLOP/s of a jitted (size x size) @ (size x size) matmul on `device`: the median of
  `repeats` after a warm-up. Default size: 2048 on CPU, 8192 on accelerators."""
  device = device or jax.devices()[0]
  size = size or (2048 if device.platform == "cpu" else 8192)
  a = jax.device_put(jax.random.normal(jax.random.key(0), (size, size), dtype), device)
  b = jax.device_put(jax.random.normal(jax.random.key(1), (size, size), dtype), device)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  seconds = statistics.median(times)
  return {"flops_per_s": 2 * size**3 / seconds, "size": size, "dtype": dtype,
          "seconds": seconds, "device": device.device_kind}


def spec_peak(device_kind: str, dtype: str = "float32") -> float | None:
  """Datasheet FLOP/s of a known accelerator for `dtype` matmuls, else None (CPUs, others)."""
  for prefix, peaks in SPEC_PEAK_TFLOPS.items():
    if device_kind.startswith(prefix) and dtype in peaks:
      return peaks[dtype] * 1e12
  return None
