"""Entry point: parse flags, start distributed JAX when asked, hand over to the trainer.

  python -m ditm_jax.main --config=configs/demo.py --workdir=DIR [--mode=train|eval|export]
      [--step=N] [--config.<field>=<value> ...]

--step picks the checkpoint that eval and export use (default: the latest).

  python -m ditm_jax.main --config=configs/coco.py --mode=prepare \
      --config.data.raw_dir=RAW --config.data.dir=PREPARED

prepares raw data for training (ditm_jax.data.prepare); it needs no --workdir.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py:variant=ditm.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and exports.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "export", "prepare"], "What to run.")
flags.DEFINE_integer("step", None, "Checkpoint step for --mode=eval/export (default: latest).")


def _exit_with(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def _maybe_initialize_distributed():
  """jax.distributed.initialize when the launch asks for it, before anything else touches JAX.

  DITM_COORDINATOR_ADDRESS (host:port), DITM_NUM_PROCESSES and DITM_PROCESS_ID give the
  processes explicitly; DITM_DISTRIBUTED=auto lets JAX detect them (Cloud TPU, SLURM).
  Neither set: one process.
  """
  address = os.environ.get("DITM_COORDINATOR_ADDRESS")
  auto = os.environ.get("DITM_DISTRIBUTED", "")
  if not address and not auto:
    return
  if auto and auto != "auto":
    _exit_with(f"DITM_DISTRIBUTED={auto!r}: the only value is 'auto'")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used on CPU only
  if address:
    missing = [v for v in ("DITM_NUM_PROCESSES", "DITM_PROCESS_ID") if v not in os.environ]
    if missing:
      _exit_with(f"DITM_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not; set all "
                 "three, or DITM_DISTRIBUTED=auto")
    jax.distributed.initialize(coordinator_address=address,
                               num_processes=int(os.environ["DITM_NUM_PROCESSES"]),
                               process_id=int(os.environ["DITM_PROCESS_ID"]))
  else:
    jax.distributed.initialize()


def _validate(config):
  """The config's constraints (ditm_jax/validate.py), before any work: exit 2 on a violation."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  from ditm_jax import validate  # pylint: disable=g-import-not-at-top
  missing = common.missing_fields(config)
  if missing:
    print(f"error: the config lacks field(s) {', '.join(missing)}; build it on "
          "configs/common.py:base_config(), which holds every field", file=sys.stderr)
    sys.exit(2)
  try:
    notes = validate.check(config, jax.device_count())
  except validate.ConfigError as e:
    for line in e.lines:
      print(f"error: {line}", file=sys.stderr)
    sys.exit(2)
  if jax.process_index() == 0:
    for line in notes:
      print(f"note: {line}", flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if FLAGS.mode == "prepare":  # no workdir, no JAX
    from ditm_jax.data import prepare  # pylint: disable=g-import-not-at-top
    try:
      prepare.run(FLAGS.config)
    except (ValueError, OSError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    return
  if FLAGS.workdir is None:
    raise app.UsageError("--workdir is required")
  logging.set_verbosity(logging.WARNING)  # progress lines come from the trainer
  from ditm_jax import cpu  # pylint: disable=g-import-not-at-top
  if cpu.expects_cpu_backend():  # before anything starts JAX's backend
    from ditm_jax.cpu import memory  # pylint: disable=g-import-not-at-top
    memory.keep_freed_memory()
  _maybe_initialize_distributed()
  _validate(FLAGS.config)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # TensorFlow only feeds data
  from ditm_jax import train  # pylint: disable=g-import-not-at-top
  from ditm_jax import preemption  # pylint: disable=g-import-not-at-top
  from ditm_jax import workdir  # pylint: disable=g-import-not-at-top
  try:
    train.run(FLAGS.config, FLAGS.workdir, FLAGS.mode, step=FLAGS.step)
  except (train.UserError, workdir.WorkdirError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except preemption.Preempted as e:  # resumable: status 143, see ditm_jax/preemption.py
    print(str(e), file=sys.stderr)
    sys.exit(preemption.EXIT_CODE)


def parse_flags(argv):
  """absl flag parsing, with a config that fails to load reported in one line."""
  try:
    rest = FLAGS(argv)
  except (AttributeError, KeyError, TypeError) as e:  # --config.<unknown field>=...
    print(f"error: a --config.<field> override names no field of the config ({e}); "
          "check the spelling against the config file", file=sys.stderr)
    sys.exit(1)
  except flags.Error as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    flag = lines[0].split(":")[0] if lines else "flags"
    print(f"error: {flag}: {lines[-1] if lines else e}", file=sys.stderr)
    sys.exit(1)
  if FLAGS.config is None:
    print("error: --config is required, e.g. --config=configs/demo.py", file=sys.stderr)
    sys.exit(1)
  try:
    FLAGS.config.get("seed")  # a config file that failed to load raises here
  except (IOError, AttributeError) as e:
    path = FLAGS["config"].config_filename
    why = "no such file" if not os.path.exists(path) else str(e.__cause__ or e).splitlines()[-1]
    print(f"error: --config={path}: {why}; pass an existing config file, "
          "e.g. --config=configs/demo.py", file=sys.stderr)
    sys.exit(1)
  return rest


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
