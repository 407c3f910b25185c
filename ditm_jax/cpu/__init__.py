"""CPU-only speed helpers, imported only where JAX runs on its CPU backend.

- `keep_freed_memory`: XLA:CPU allocates each execution's temporaries as one large block
  from worker threads, which glibc serves with a fresh `mmap` and returns with `munmap`, so
  every step faults in its temporaries again. Telling glibc to keep freed memory in the
  process lets the block be reused from step to step. It must run before JAX starts its
  backend (the entry points call it first thing); `DITM_KEEP_FREED_MEMORY=0` skips it.
- `Dense`: `nn.Dense` whose weight gradient x^T g runs as a plain row-major matmul (the
  narrower operand transposed into a copy first), which XLA:CPU runs faster than autodiff's
  form when the two widths differ. Values and the other gradients are unchanged; only the
  weight gradient's summation order differs. `models.layers.Dense` picks it on CPU only.

This package and `memory` import nothing but the standard library: `expects_cpu_backend`
and `keep_freed_memory` run before JAX is imported.

Measurements: `python -m ditm_jax.bench` (ditm_jax/bench/README.md).
"""

import importlib.util
import os
import pkgutil

_ACCELERATOR_PLUGINS = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin")


def expects_cpu_backend() -> bool:
  """Whether JAX will pick its CPU backend (JAX_PLATFORMS, else no accelerator plugin
  installed), answered before JAX is imported (`memory.keep_freed_memory` must run first)."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  if any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS):
    return False
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top  (namespace package, if any)
  except ImportError:
    return True
  return not any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))
