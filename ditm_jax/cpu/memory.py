"""`keep_freed_memory`: glibc keeps freed memory, so XLA:CPU reuses its temporaries (see the
package docstring). Standard library only: it must run before JAX (or anything that starts
threads) is imported."""

import ctypes
import os
import sys

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory (see the module docstring); True if it did."""
  if os.environ.get("DITM_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
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
