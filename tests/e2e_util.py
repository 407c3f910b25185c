"""Runs the real entry point in a subprocess (fresh JAX, chosen device count).

Subprocesses compile with fewer LLVM passes (about half the compile time; every run a test
compares is compiled the same way) and share compiled programs through one persistent JAX
cache per test run, shared by the pytest workers: most end-to-end tests train the same tiny
demo, so later runs skip most compilation.
"""

import atexit
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPILE_FAST = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
_CACHE = os.environ.get("DITM_TEST_JAX_CACHE")  # one for all pytest workers (conftest.py)
if _CACHE is None:
  _CACHE = tempfile.mkdtemp(prefix="ditm_test_jax_cache_")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


def env(devices=1, **extra):
  e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0", JAX_PLATFORMS="cpu",
           PYTHONPATH=str(ROOT), JAX_COMPILATION_CACHE_DIR=_CACHE,
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {COMPILE_FAST}"
  e.update(extra)
  return e


def command(config, workdir, *overrides, mode="train"):
  return [sys.executable, "-m", "ditm_jax.main", f"--config={ROOT / config}",
          f"--workdir={workdir}", f"--mode={mode}", *overrides]


def run(config, workdir, *overrides, mode="train", devices=1, check=True, timeout=300, **extra):
  proc = subprocess.run(command(config, workdir, *overrides, mode=mode), cwd=ROOT,
                        env=env(devices, **extra), capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                         f"stderr:\n{proc.stderr[-3000:]}")
  return proc


def metrics(workdir):
  with open(pathlib.Path(workdir) / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def train_losses(workdir):
  return {r["step"]: r["train/loss"] for r in metrics(workdir) if "train/loss" in r}


def kill_after(config, workdir, path, *overrides, timeout=240, **extra):
  """Starts a training run and SIGKILLs it as soon as `path` (e.g. its first checkpoint) exists."""
  proc = subprocess.Popen(command(config, workdir, *overrides), cwd=ROOT, env=env(**extra),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while not path.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert path.exists(), f"the run never wrote {path}"
