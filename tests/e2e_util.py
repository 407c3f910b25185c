"""Runs the real entry point in a subprocess (fresh JAX, chosen device count)."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def env(devices=1, **extra):
  e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0", JAX_PLATFORMS="cpu",
           PYTHONPATH=str(ROOT))
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
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
