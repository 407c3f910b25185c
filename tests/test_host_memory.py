"""host_memory: with freed memory kept, XLA:CPU's per-execution temporaries stop faulting in
fresh pages (the kernel's own page-fault counter, in a fresh process per case)."""

import os
import subprocess
import sys

import pytest

from ditm_jax import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A jitted function whose 64 MiB temporary (the product) XLA allocates on every call; page
# faults counted over the last three of five calls.
CHILD = """
import resource, sys
from ditm_jax import host_memory
kept = host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
a, b = jnp.ones((4096, 64)), jnp.ones((64, 4096))
f = jax.jit(lambda a, b: jnp.max(jnp.sin(a @ b)))
for _ in range(2):
  f(a, b).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
  f(a, b).block_until_ready()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(keep):
  env = dict(os.environ, JAX_PLATFORMS="cpu", DITM_KEEP_FREED_MEMORY="1" if keep else "0",
             PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                       check=True, timeout=300).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_kept_memory_stops_per_call_page_faults():
  kept, faults_kept = _faults(True)
  not_kept, faults_default = _faults(False)
  assert kept and not not_kept
  # 64 MiB is 16,384 pages of 4 KiB per call: the default faults them in on every call.
  assert faults_default > 3 * 8_000, faults_default
  assert faults_kept < 2_000, faults_kept


def test_skipped_for_accelerators_and_when_asked(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert not host_memory._runs_on_cpu()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_memory._runs_on_cpu()
  monkeypatch.setenv("DITM_KEEP_FREED_MEMORY", "0")
  assert not host_memory.keep_freed_memory()
