"""Side-by-side results of several runs, from their metrics.jsonl files.

  python -m ditm_jax.report workdirs/demo_baseline_vse workdirs/demo_ditm ...
"""

import json
import os
import sys

from ditm_jax.metrics import table


def last_eval(workdir):
  """The last evaluation line (metrics with a '<eval>/' prefix other than train/) of a run."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist; train the run first")
  found = {}
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      evals = {k: v for k, v in row.items() if "/" in k and not k.startswith("train/")}
      if evals:
        found = evals
  return found


def main(argv):
  if not argv:
    print("usage: python -m ditm_jax.report WORKDIR [WORKDIR ...]", file=sys.stderr)
    return 1
  try:
    runs = {os.path.basename(os.path.normpath(w)): last_eval(w) for w in argv}
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(table(runs))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
