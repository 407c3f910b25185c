"""Variants x seeds of one config: one table (mean ± std over seeds) and one picture.

  python -m ditm_jax.study --config=configs/demo.py \
      --variants=baseline_vse,baseline_infonce,ditm,no_relax,no_order --seeds=3 \
      --workdir=studies/demo [--eval=NAME] [--config.<field>=<value> ...]

Each run is `python -m ditm_jax.main --config=<config>,variant=<v> --config.seed=<s>` with
the given overrides, trained in `<workdir>/<variant>/seed<s>`, one after another. A run that
finished with the same settings (its config.json against what the command gives today) is
reused; an interrupted one resumes; a finished one with other settings is refused. The study writes
`<workdir>/study.md` (the table, the command and the machine), `study.json` (every run's
metrics and the aggregates) and `study.png` (each metric per variant: every seed a dot,
the mean with ± std whiskers), so differences smaller than the spread over seeds are visible.

Metrics come from each run's final evaluation (`--eval`, default: the one with graded
metrics, else the first by name that is not a dev split). `collapsed` counts the seeds whose
training ended collapsed (the trainer's `train/collapsed`, see `ditm_jax.train`).
"""

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np

COLUMNS = (("i2t_r1", "i2t R@1"), ("i2t_r5", "R@5"), ("i2t_r10", "R@10"), ("t2i_r1", "t2i R@1"),
           ("t2i_r5", "R@5"), ("t2i_r10", "R@10"), ("rsum", "RSUM"),
           ("i2t_ndcg10", "i2t nDCG@10"), ("t2i_ndcg10", "t2i nDCG@10"),
           ("order_tau", "order τ"), ("grade_tau", "grade τ"))
_PERCENT = {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"}
RECORD = "study_run.json"  # in a run's workdir once it finished: the command that made it


class StudyError(Exception):
  """A usage or data error of the study, reported in one line."""


def parse(argv):
  p = argparse.ArgumentParser(prog="python -m ditm_jax.study",
                              description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True, help="config file[:args], e.g. configs/demo.py")
  p.add_argument("--variants", required=True, help="comma-separated variants (configs/common.py)")
  p.add_argument("--seeds", default="3", help="a count N (seeds 0..N-1) or a list '0,3,7'")
  p.add_argument("--workdir", required=True, help="root of the runs and the study files")
  p.add_argument("--eval", default=None, help="evaluation whose final metrics are tabled")
  args, rest = p.parse_known_args(argv)
  overrides = [a for a in rest if a.startswith("--config.")]
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    p.error(f"unrecognized arguments: {' '.join(unknown)} (config fields go as "
            "--config.<field>=<value>)")
  for bad in ("--config.seed", "--config.variant"):
    if any(o.split("=")[0] == bad for o in overrides):
      p.error(f"{bad} is set by the study (--seeds, --variants); do not pass it")
  path, _, arg = args.config.partition(":")
  if any(part.strip().startswith("variant=") for part in arg.split(",")):
    p.error(f"--config={args.config} names a variant; the study sets it (--variants)")
  args.config_path, args.config_arg = path, arg
  args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
  if not args.variant_list:
    p.error("--variants is empty")
  try:
    seeds = [int(s) for s in args.seeds.split(",")]
  except ValueError:
    p.error(f"--seeds={args.seeds!r}: give a count or a comma-separated list of integers")
  args.seed_list = list(range(seeds[0])) if len(seeds) == 1 else seeds
  if not args.seed_list:
    p.error("--seeds must be at least 1")
  args.overrides = overrides
  return args


def run_dir(workdir, variant, seed):
  return os.path.join(workdir, variant, f"seed{seed}")


def command(args, variant, seed):
  """The `ditm_jax.main` command line of one run (evaluations only at the end by default)."""
  config = f"{args.config_path}:{','.join(filter(None, [args.config_arg, f'variant={variant}']))}"
  return [sys.executable, "-m", "ditm_jax.main", f"--config={config}",
          f"--workdir={run_dir(args.workdir, variant, seed)}", f"--config.seed={seed}",
          "--config.eval_every_steps=0", *args.overrides]


def changed_settings(workdir, cmd):
  """The config fields in which the finished run in `workdir` differs from what `cmd` (a
  `ditm_jax.main` command line) would train now, with today's config files and defaults."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from ditm_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  argv = [cmd[0]] + [a for a in cmd[1:] if a.startswith("--config")]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)  # the overrides it accepts come from argv
  values(argv)
  with open(os.path.join(workdir, workdir_lib.IDENTITY)) as f:
    recorded = workdir_lib.flat_dict(json.load(f))
  fixed, resumable = workdir_lib.differences(recorded, workdir_lib.flat(values.config))
  # Fields added to the config base after the run was made do not make it stale.
  return "; ".join(f"{k}={a} there, {b} now" for k, a, b in fixed + resumable
                   if a != workdir_lib.ABSENT)


def train_all(args):
  """Trains every (variant, seed) not finished yet, one after another."""
  runs = [(v, s) for v in args.variant_list for s in args.seed_list]
  for n, (variant, seed) in enumerate(runs, 1):
    cmd = command(args, variant, seed)
    workdir = run_dir(args.workdir, variant, seed)
    record = os.path.join(workdir, RECORD)
    argv = cmd[1:]
    if os.path.exists(record):
      stale = changed_settings(workdir, cmd)
      if not stale:
        print(f"[{n}/{len(runs)}] {variant} seed {seed}: finished before, reused", flush=True)
        continue
      raise StudyError(f"{workdir} holds a finished run with other settings ({stale}); "
                       "delete it or pass another --workdir")
    os.makedirs(workdir, exist_ok=True)
    print(f"[{n}/{len(runs)}] {variant} seed {seed}: training ({shlex.join(cmd[1:])})",
          flush=True)
    t0 = time.time()
    with open(os.path.join(workdir, "study.log"), "a") as log:
      status = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if status:
      raise StudyError(f"the run {variant} seed {seed} failed with status {status}; see "
                       f"{os.path.join(workdir, 'study.log')}")
    seconds = time.time() - t0
    with open(record, "w") as f:
      json.dump({"argv": argv, "seconds": seconds}, f)
    print(f"[{n}/{len(runs)}] {variant} seed {seed}: done in {seconds:.0f}s", flush=True)


def read_run(workdir, eval_name=None):
  """(eval name, {metric: value} of the final evaluation, collapsed 0/1) of one run."""
  from ditm_jax import metrics  # pylint: disable=g-import-not-at-top
  writer = metrics.MetricsWriter(workdir)
  path = writer.path
  try:
    rows = writer.rows()  # without a torn last line
  except ValueError as e:
    raise StudyError(str(e)) from None
  final = next((r for r in reversed(rows) if any(k.endswith("/rsum") for k in r)), None)
  if final is None:
    raise StudyError(f"{path} has no evaluation with an RSUM")
  names = sorted(k.rsplit("/", 1)[0] for k in final if k.endswith("/rsum"))
  if eval_name is None:
    graded = [n for n in names if f"{n}/i2t_ndcg10" in final]
    eval_name = (graded or [n for n in names if not n.startswith("dev")] or names)[0]
  if eval_name not in names:
    raise StudyError(f"{path}: no evaluation {eval_name!r} (have {names}); pass --eval=<one>")
  metrics = {c: final[f"{eval_name}/{c}"] for c, _ in COLUMNS if f"{eval_name}/{c}" in final}
  train = [r for r in rows if "train/loss" in r]
  collapsed = float(train[-1].get("train/collapsed", 0.0)) if train else 0.0
  return eval_name, metrics, collapsed


def aggregate(args):
  """{variant: {"runs": {seed: metrics}, "mean": ..., "std": ..., "collapsed": n}}, eval name."""
  out, eval_name = {}, args.eval
  for v in args.variant_list:
    runs, collapsed = {}, 0
    for s in args.seed_list:
      eval_name, metrics, c = read_run(run_dir(args.workdir, v, s), eval_name)
      runs[s] = metrics
      collapsed += int(c > 0)
    keys = [c for c, _ in COLUMNS if all(c in m for m in runs.values())]
    values = {k: np.array([runs[s][k] for s in args.seed_list], np.float64) for k in keys}
    out[v] = {"runs": runs, "collapsed": collapsed,
              "mean": {k: float(np.mean(x)) for k, x in values.items()},
              "std": {k: float(np.std(x, ddof=1)) if len(x) > 1 else 0.0
                      for k, x in values.items()}}
  return out, eval_name


def _cell(key, mean, std):
  return f"{mean:.1f} ± {std:.1f}" if key in _PERCENT else f"{mean:.3f} ± {std:.3f}"


def table(results, num_seeds):
  """Markdown: a row per variant, mean ± std over seeds, and the collapsed seeds."""
  keys = [c for c, _ in COLUMNS if all(c in r["mean"] for r in results.values())]
  names = dict(COLUMNS)
  lines = ["| variant | " + " | ".join(names[k] for k in keys) + " | collapsed |",
           "|---|" + "---:|" * (len(keys) + 1)]
  for v, r in results.items():
    cells = [_cell(k, r["mean"][k], r["std"][k]) for k in keys]
    lines.append(f"| `{v}` | " + " | ".join(cells) + f" | {r['collapsed']}/{num_seeds} |")
  return "\n".join(lines)


def figure(results, title):
  """Each metric per variant: every seed a dot, the mean a bar marker with ± std whiskers."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  keys = [c for c, _ in COLUMNS if all(c in r["mean"] for r in results.values())]
  variants = list(results)
  cols = 4
  rows = -(-len(keys) // cols)
  fig = Figure(figsize=(3.6 * cols, 2.9 * rows + 0.4), layout="constrained")
  fig.suptitle(title, fontsize=10)
  x = np.arange(len(variants))
  colors = [f"C{j % 10}" for j in range(len(variants))]
  for i, key in enumerate(keys):
    ax = fig.add_subplot(rows, cols, i + 1)
    for j, v in enumerate(variants):
      seeds = [m[key] for m in results[v]["runs"].values()]
      ax.plot(np.full(len(seeds), j + 0.12), seeds, "o", color=colors[j], ms=3, alpha=0.6)
      ax.errorbar(j - 0.05, results[v]["mean"][key], yerr=results[v]["std"][key], fmt="_",
                  color=colors[j], ms=14, mew=2, capsize=5, elinewidth=1.5)
    ax.set_title(key.replace("_r", " R@") if key[-2:] in ("r1", "r5") or key.endswith("r10")
                 else dict(COLUMNS)[key], fontsize=9)
    ax.set_xticks(x, variants, rotation=35, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(variants) - 0.4)
    ax.grid(axis="y", alpha=0.3)
  return fig


def machine():
  """The CPU model and core count (the runs' machine)."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), model)
  except OSError:
    pass
  return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv=None):
  args = parse(sys.argv[1:] if argv is None else argv)
  if not os.path.isfile(args.config_path):
    print(f"error: --config={args.config_path}: no such file; pass a config file, e.g. "
          "--config=configs/demo.py", file=sys.stderr)
    return 1
  try:
    from configs import common  # pylint: disable=g-import-not-at-top
    unknown = [v for v in args.variant_list if v not in common.VARIANTS]
    if unknown:
      raise StudyError(f"--variants: {', '.join(unknown)} not known; choose from "
                       f"{', '.join(common.VARIANTS)}")
    t0 = time.time()
    train_all(args)
    results, eval_name = aggregate(args)
  except StudyError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  cmd = shlex.join(["python", "-m", "ditm_jax.study"] + (sys.argv[1:] if argv is None else argv))
  n = len(args.seed_list)
  text = table(results, n)
  header = (f"Evaluation `{eval_name}`, final step; mean ± std over {n} seed(s) "
            f"({', '.join(map(str, args.seed_list))}).")
  print(header + "\n\n" + text, flush=True)
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "study.md"), "w") as f:
    f.write(f"{header}\n\n{text}\n\nCommand: `{cmd}`\n\nMachine: {machine()}; "
            f"{time.strftime('%Y-%m-%d')}, {time.time() - t0:.0f}s this invocation.\n")
  with open(os.path.join(args.workdir, "study.json"), "w") as f:
    json.dump({"command": cmd, "eval": eval_name, "seeds": args.seed_list,
               "variants": results}, f, indent=1)
  config = args.config_path + (f":{args.config_arg}" if args.config_arg else "")
  fig = figure(results, f"{config} — {eval_name}, mean ± std over {n} seeds")
  fig.savefig(os.path.join(args.workdir, "study.png"), dpi=110)
  print(f"Wrote {args.workdir}/study.md, study.json and study.png", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
