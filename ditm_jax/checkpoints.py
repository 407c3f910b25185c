"""The run's Orbax checkpoints: DIR/checkpoints (the newest few) and DIR/best (by RSUM).

Each checkpoint is a composite of the train state and JSON metadata: the step, the data
position (the step: batches are a function of (seed, step)), the seed, the config, and for
DIR/best the RSUM it was chosen by. Damaged checkpoints are set aside, never deleted
(`workdir.newest_intact`, `workdir.set_aside`).
"""

import math
import os

import jax
import orbax.checkpoint as ocp

from ditm_jax import sharding
from ditm_jax import workdir as workdir_lib


def _manager(workdir, name, keep):
  # Both managers may save the same step at once (the end of training), asynchronously:
  # distinct barrier prefixes keep their cross-process barriers apart.
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)  # Orbax needs absolute paths; URLs are already
  return ocp.CheckpointManager(
      f"{workdir.rstrip('/')}/{name}",
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, cleanup_tmp_directories=True,  # crashed saves
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=name)))


class Checkpoints:
  """Save and restore of one run's state, shaped and sharded like `abstract` (a TrainState of
  jax.ShapeDtypeStruct with shardings)."""

  def __init__(self, workdir, keep, abstract, config, with_best=True):
    self.workdir, self.abstract, self.config = workdir, abstract, config
    self.is_main = jax.process_index() == 0
    with workdir_lib.quiet_absl():  # reading a damaged step's metadata: `restore` warns
      self.latest = _manager(workdir, "checkpoints", keep)
      self.best = _manager(workdir, "best", 1) if with_best else None

  def steps(self):
    return sorted(self.latest.all_steps())

  def restore(self, step=None, set_aside=False):
    """The state at `step` (default: the newest intact checkpoint), None without checkpoints.

    Damaged newer checkpoints are reported; `set_aside` (training) moves them to
    DIR/set_aside/.
    """
    load = lambda step: self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(self.abstract), meta=ocp.args.JsonRestore())).state
    if step is not None:
      return load(step)
    step, state, damaged = workdir_lib.newest_intact(self.latest.all_steps(), load)
    if damaged:
      workdir_lib.set_aside(str(self.latest.directory), damaged, step, set_aside, self.is_main,
                            sharding.agree)
      self.latest.reload()
    return state

  def save(self, state, best=False, **meta):
    """Saves `state` plus metadata (step, data position = step, seed, config, `meta`)."""
    step = int(state.step)
    meta = {"step": step, "data_position": step, "seed": self.config.seed,
            "config": self.config.to_json(), **meta}
    (self.best if best else self.latest).save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def best_rsum(self, start):
    """The RSUM of the best checkpoint up to step `start`; -inf without one.

    Best checkpoints that are damaged, or newer than `start` (the run resumed from an older
    checkpoint), are set aside: the resumed run makes them again.
    """
    manager = self.best
    load = lambda step: manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta
    newer = [s for s in manager.all_steps() if s > start]
    step, meta, damaged = workdir_lib.newest_intact(
        [s for s in manager.all_steps() if s <= start], load)
    problems = [(s, f"newer than the resumed step {start}") for s in newer] + damaged
    if problems:
      workdir_lib.set_aside(str(manager.directory), problems, step, True, self.is_main,
                            sharding.agree, required=False)
      manager.reload()
    return -math.inf if meta is None else float(meta.get("rsum", -math.inf))

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()
