"""Keeps freed host memory in the process, for XLA:CPU runs on Linux (glibc).

XLA:CPU allocates the temporaries of each execution as one block and frees it when the
execution ends: 684 MiB for the reference train step of `python -m ditm_jax.bench`. glibc
serves a block that large from a fresh `mmap` when the allocating thread is not the main one
(as XLA's are), whatever its mmap threshold, and returns it with `munmap`. So every step faulted
in ~154,000 zeroed pages: 0.37 s of kernel time per step on 2 CPU cores, and the step took
1.09-1.13 s against 0.94-0.98 s with the block kept (the fastest of 4 steps, three rounds).

`keep_freed_memory` tells glibc to serve every thread from the main heap, without mmap, and
never to return freed memory to the system: the block is reused from step to step. It must run
before JAX starts its backend (the threads that exist by then keep their own arenas); the entry
points call it first thing. It is skipped where JAX will run on an accelerator (device memory
is not malloc's), off glibc, and when DITM_KEEP_FREED_MEMORY=0.
"""

import ctypes
import importlib.util
import os
import pkgutil
import sys

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_ACCELERATOR_PLUGINS = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin")


def _runs_on_cpu() -> bool:
  """Whether JAX will pick its CPU backend: JAX_PLATFORMS, else no accelerator plugin installed."""
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


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory (see the module docstring); True if it did."""
  if os.environ.get("DITM_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
    return False
  if not _runs_on_cpu():
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement  (glibc only)
  except (OSError, AttributeError):
    return False
  # Later threads share the main arena; no request is served by mmap; no trimming (-1 is
  # SIZE_MAX once glibc widens it).
  return bool(libc.mallopt(_M_ARENA_MAX, 1) and libc.mallopt(_M_MMAP_MAX, 0)
              and libc.mallopt(_M_TRIM_THRESHOLD, -1))
