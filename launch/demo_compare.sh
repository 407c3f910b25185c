#!/usr/bin/env bash
# Trains the demo under the baselines and DITM, then prints their results side by side.
#   bash launch/demo_compare.sh [WORKDIR_ROOT] [VARIANTS...]
set -euo pipefail
root=${1:-workdirs}
shift || true
variants=${*:-baseline_vse baseline_infonce ditm}
python=${PYTHON:-python}
dirs=()
for v in $variants; do
  "$python" -m ditm_jax.main --config="configs/demo.py:variant=$v" --workdir="$root/demo_$v"
  dirs+=("$root/demo_$v")
done
"$python" -m ditm_jax.report "${dirs[@]}"
