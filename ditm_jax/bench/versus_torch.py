"""The reference step against PyTorch on the same machine, in the same run.

`torch_reference.py` times PyTorch's reading of the reference step in another interpreter (one
with torch and transformers); `interleaved_with_torch` alternates it with ours round by round,
so the comparison holds where the machine's speed drifts (a shared VM).
"""

import json
import os
import statistics
import subprocess

from ditm_jax.bench import setups
from ditm_jax.bench import train_step


def torch_reference(python, bert_base=False):
  """The PyTorch reading of the reference step (`ditm_jax.bench.torch_reference`) run by
  `python` (with BERT-base as the text tower's BERT when `bert_base`)."""
  proc = subprocess.run([python, "-m", "ditm_jax.bench.torch_reference"] +
                        (["--bert_base"] if bert_base else []),
                        cwd=setups.ROOT, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=setups.ROOT), timeout=3600, check=False)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode != 0 or not lines:
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise SystemExit(f"error: --torch_python={python}: ditm_jax.bench.torch_reference failed "
                     f"(exit {proc.returncode}): {last}")
  return json.loads(lines[-1])


def interleaved_with_torch(config, model, batch, python, rounds, steps=5):
  """`rounds` rounds, each PyTorch's reference step (`torch_reference`, a fresh process: the
  median of its 5 steps) and then ours (the median of `steps`, one compiled step throughout).
  Per-round seconds and ratios."""
  run, _, _ = train_step.step_runner(config, model, batch)
  run(2)  # compile and warm up
  torch_s, ours_s = [], []
  for _ in range(rounds):
    torch_s.append(torch_reference(python)["step_s"])
    ours_s.append(statistics.median(run(steps)))
  ratios = [t / o for t, o in zip(torch_s, ours_s)]
  return {"rounds": rounds, "torch_s": torch_s, "ours_s": ours_s, "ratio": ratios,
          "torch_median_s": statistics.median(torch_s), "ours_median_s": statistics.median(ours_s),
          "ratio_median": statistics.median(ratios)}
