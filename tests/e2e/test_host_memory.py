"""cpu.memory.keep_freed_memory: with freed memory kept, XLA:CPU's per-execution temporaries
stop faulting in fresh pages (the kernel's own page-fault counter, in a fresh process per case)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A jitted function whose 64 MiB temporary (the product) XLA allocates on every call: the page
# faults of each of 19 calls after the first.
CHILD = """
import resource
from ditm_jax.cpu import dense as cpu
from ditm_jax.cpu import memory
kept = memory.keep_freed_memory()
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
