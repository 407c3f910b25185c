"""The one trainer: train, evaluate and export, all driven by an ml_collections config."""

import functools
import math
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import tensorflow as tf

from ditm_jax import collapse
from ditm_jax import evaluate as evaluate_lib
from ditm_jax import preemption
from ditm_jax import sharding
from ditm_jax import step as step_lib
from ditm_jax import workdir as workdir_lib
from ditm_jax.data import datasets
from ditm_jax.data import packing_stats
from ditm_jax.models import model as model_lib


class UserError(Exception):
  """An error the user can fix (bad config, bad data, unwritable workdir)."""


class NonFiniteLoss(UserError):
  """The loss became NaN/inf; the last good checkpoint is kept."""


class Trainer:
  """Builds mesh, data, model, optimizer and checkpoints once; runs the modes."""

  def __init__(self, config, workdir):
    self.config = config
    # Orbax needs absolute paths; URLs (gs://...) are absolute already.
    self.workdir = workdir if "://" in workdir else os.path.abspath(workdir)
    self.is_main = jax.process_index() == 0
    _check_workdir(self.workdir)
    self.mesh = sharding.make_mesh(config)
    self.num_devices = self.mesh.devices.size
    if config.batch_size % self.num_devices:
      raise UserError(f"config.batch_size={config.batch_size} must be a multiple of the "
                      f"{self.num_devices} devices on the data axis")
    self.data = datasets.load(config)
    # Packing buffers sized from the training data (a copy: the caller's config is left as is).
    self.config = config = config.copy_and_resolve_references()
    self.packing_notes = packing_stats.derive(config, self.data.train, self.mesh.shape[sharding.DATA])
    dtype = jnp.dtype(config.dtype)
    self.model = model_lib.build(config, self.data.vocab_size, dtype=dtype)
    self.tx = step_lib.make_optimizer(config)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.state_sharding, self._init = self._abstract_state()
    # Both managers may save the same step at once (the end of training), asynchronously:
    # distinct barrier prefixes keep their cross-process barriers apart (one shared
    # "_async_write_complete.<step>" key failed the save and then the shutdown barrier when
    # two processes ran on a loaded machine).
    manager = lambda name, keep: ocp.CheckpointManager(
        tf.io.gfile.join(self.workdir, name),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,  # crashed saves
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=name)))
    with workdir_lib.quiet_absl():  # reading a damaged step's metadata: `restore` warns
      self.checkpoints = manager("checkpoints", config.keep_checkpoints)
      self.best = manager("best", 1)
    self.writer = evaluate_lib.MetricsWriter(self.workdir, enabled=self.is_main)

  # ---------------------------------------------------------------- state
  def _example_batch(self):
    return self.data.train.example_batch(self.config, self.num_devices)

  def _abstract_state(self):
    example = jax.tree.map(jnp.asarray, self._example_batch())
    init = functools.partial(step_lib.init_state, self.model, self.tx, example)
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = sharding.state_shardings(self.mesh, abstract, self.config)
    return shardings, jax.jit(init, out_shardings=shardings)

  def initial_state(self):
    """Random init, then any pretrained backbones copied in (in the state's shardings)."""
    state = self._init(jax.random.key(self.config.seed))
    pretrained = model_lib.pretrained_params(self.config)
    if not pretrained:
      return state
    return state.replace(params=model_lib.merge_pretrained(state.params, pretrained))

  def restore(self, step=None, manager=None, set_aside=False):
    """The state at `step` (default: the newest intact checkpoint), None without checkpoints.

    Damaged newer checkpoints are reported; `set_aside` (training) moves them to
    DIR/set_aside/.
    """
    manager = manager or self.checkpoints
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(self._init, jax.random.key(self.config.seed)), self.state_sharding)
    load = lambda step: manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())).state
    if step is not None:
      return load(step)
    step, state, damaged = workdir_lib.newest_intact(manager.all_steps(), load)
    if damaged:
      workdir_lib.set_aside(str(manager.directory), damaged, step, set_aside, self.is_main,
                            sharding.agree)
      manager.reload()
    return state

  def save(self, state, manager=None, **meta):
    """Saves state plus metadata (step, data position = step, config, extra `meta`)."""
    step = int(state.step)
    meta = {"step": step, "data_position": step, "seed": self.config.seed,
            "config": self.config.to_json(), **meta}
    (manager or self.checkpoints).save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  # ---------------------------------------------------------------- train
  def train(self):
    config = self.config
    state = self.restore(set_aside=True)
    start = 0 if state is None else int(state.step)
    if state is None:
      state = self.initial_state()
    else:
      logging.info("Resuming from step %d", start)
      if self.is_main:
        print(f"Resuming from checkpoint at step {start}", flush=True)
    self.writer.truncate_after(start)
    gaps = collapse.history_from_rows(self.writer.rows())  # [(step, pos_sim - neg_sim)]
    warned = False
    if self.is_main:  # the packing buffers chosen, and the run's config (for ditm_jax.retrieve)
      for line in self.packing_notes:
        print(f"Packing: {line}", flush=True)
      with tf.io.gfile.GFile(tf.io.gfile.join(self.workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=1))
    step_fn = jax.jit(functools.partial(step_lib.train_step, model=self.model, tx=self.tx,
                                        config=config, mesh=self.mesh),
                      in_shardings=(self.state_sharding, self.batch_sharding),
                      out_shardings=(self.state_sharding, None), donate_argnums=(0,))
    batches = self.data.train.batches(config, start, jax.process_index(), jax.process_count())
    evaluator = evaluate_lib.Evaluator(self)
    best_rsum = _best_metric(self.best, self.is_main, start)
    pairs = config.batch_size * config.data.captions_per_image
    t0, s0 = time.perf_counter(), start
    metrics = None
    stop = preemption.StopRequest(self.mesh, sharding.DATA)
    for local in batches:
      batch = sharding.global_batch(self.batch_sharding, local)
      state, metrics = step_fn(state, batch)
      step = start = start + 1
      if step % config.log_every_steps == 0 or step == config.total_steps:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        self._check_finite(state)
        dt = time.perf_counter() - t0
        rate = (step - s0) / max(dt, 1e-9)
        values["train/steps_per_s"] = rate
        values["train/pairs_per_s"] = rate * pairs
        gaps.append((step, values["train/pos_sim"] - values["train/neg_sim"]))
        since = collapse.since(gaps, step, config.loss.collapse_gap, collapse.window(config))
        values["train/sim_gap"] = gaps[-1][1]
        values["train/collapsed"] = float(since is not None)
        self.writer.write(step, values)
        if since is not None and not warned and self.is_main:
          print(collapse.WARNING.format(step=step, gap=config.loss.collapse_gap, since=since,
                                        loss=values["train/loss"]), flush=True)
          warned = True
        eta = (config.total_steps - step) / max(rate, 1e-9)
        if self.is_main:
          print(f"step {step:>6}/{config.total_steps} " + " ".join(
              f"{k}={values['train/' + k]:.4f}" for k in ("loss", "match", "order", "beta")) +
                f" | {values['train/pairs_per_s']:.0f} pairs/s, ETA {eta:.0f}s", flush=True)
        t0, s0 = time.perf_counter(), step
      due = evaluator.due(step, final=step == config.total_steps)
      if due:
        results = evaluator.run(state.params, step, due)
        rsum = _first_rsum(results)
        # Process 0 decides, so that every process enters the (collective) save or none does.
        if sharding.agree(rsum is not None and rsum > best_rsum) and self._check_finite(state):
          best_rsum = sharding.agree(float(rsum))
          self.save(state, self.best, rsum=best_rsum)
      if step % config.checkpoint_every_steps == 0 or step == config.total_steps:
        self._check_finite(state)
        self.save(state)
      if due or step % config.checkpoint_every_steps == 0:
        t0, s0 = time.perf_counter(), step  # step rates exclude evaluation and saving
      if step < config.total_steps and stop.agreed():  # SIGTERM: save, then stop
        if step % config.checkpoint_every_steps:
          self._check_finite(state)
          self.save(state)
        self.checkpoints.wait_until_finished()
        self.best.wait_until_finished()
        stop.close()
        raise preemption.Preempted(step, self.workdir)
    stop.close()
    if metrics is None and self.is_main:
      print(f"Already trained to step {start}; nothing to do.", flush=True)
    self.checkpoints.wait_until_finished()
    self.best.wait_until_finished()
    if metrics is None:  # evaluators (exports included) still run on the restored state
      evaluator.run(state.params, int(state.step), write=False)
    final = evaluator.latest
    evaluate_lib.print_table(final)
    evaluate_lib.write_plots(self, evaluator.embedder)
    return final

  def _check_finite(self, state):
    bad = int(jax.device_get(state.bad_step))
    if bad < 0:
      return True
    ids = self.data.train.step_image_ids(self.config, bad)
    last = self.checkpoints.latest_step()
    raise NonFiniteLoss(
        f"non-finite loss at step {bad} (batch of image ids {ids[:8].tolist()}"
        f"{'...' if len(ids) > 8 else ''}); the last good checkpoint is step {last} in "
        f"{self.workdir}/checkpoints. Lower config.optim.lr or check the data for NaN/inf.")

  # ---------------------------------------------------------------- eval/export
  def _restored_params(self, step=None):
    if step is not None and step not in self.checkpoints.all_steps():
      raise UserError(f"no checkpoint of step {step} in {self.workdir}/checkpoints (have "
                      f"{sorted(self.checkpoints.all_steps())}); pass one of those to --step")
    state = self.restore(step)
    if state is None:
      raise UserError(f"no checkpoint in {self.workdir}/checkpoints; train first "
                      "(--mode=train) or pass the workdir of a trained run")
    return state

  def evaluate(self, step=None):
    """Metric evaluators at checkpoint `step` (default latest): eval_results.json/.md, plots."""
    state = self._restored_params(step)
    evaluator = evaluate_lib.Evaluator(self, which="metrics")
    results = evaluator.run(state.params, int(state.step), write=False)
    train_rows = [r for r in self.writer.rows() if "train/collapsed" in r]
    if train_rows and self.is_main:  # the training run's own verdict, at its last log line
      last = train_rows[-1]
      results["train/collapsed"] = last["train/collapsed"]
      if last["train/collapsed"]:
        gap = self.config.loss.collapse_gap
        first = collapse.since(collapse.history_from_rows(train_rows), last["step"], gap, 0)
        print(collapse.WARNING.format(step=last["step"], gap=gap, since=first,
                                      loss=last["train/loss"]), flush=True)
    evaluate_lib.write_results(self.workdir, int(state.step), results)
    evaluate_lib.print_table(results)
    evaluate_lib.write_plots(self, evaluator.embedder)
    return results

  def export(self, step=None):
    """Export evaluators (or every evaluated split) at checkpoint `step` (default latest)."""
    state = self._restored_params(step)
    return evaluate_lib.export(self, state.params, int(state.step))


def _check_workdir(workdir):
  try:
    tf.io.gfile.makedirs(workdir)
    probe = tf.io.gfile.join(workdir, f".write_test.{jax.process_index()}")
    with tf.io.gfile.GFile(probe, "w") as f:
      f.write("ok")
    tf.io.gfile.remove(probe)
  except (tf.errors.OpError, OSError) as e:
    raise UserError(f"workdir {workdir} is not writable ({e.__class__.__name__}); "
                    "pass a --workdir you can write to") from None


def _first_rsum(results):
  for key, value in results.items():
    if key.endswith("/rsum"):
      return value
  return None


def _best_metric(manager, is_main, start):
  """The RSUM of the best checkpoint up to step `start`; -inf without one.

  Best checkpoints that are damaged, or newer than `start` (the run resumed from an older
  checkpoint), are set aside: the resumed run makes them again.
  """
  load = lambda step: manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore())).meta
  newer = [s for s in manager.all_steps() if s > start]
  step, meta, damaged = workdir_lib.newest_intact(
      [s for s in manager.all_steps() if s <= start], load)
  problems = [(s, f"newer than the resumed step {start}") for s in newer] + damaged
  if problems:
    workdir_lib.set_aside(str(manager.directory), problems, step, True, is_main,
                          sharding.agree, required=False)
    manager.reload()
  return -math.inf if meta is None else float(meta.get("rsum", -math.inf))


def run(config, workdir, mode, step=None):
  """Runs `mode`; `step` picks the checkpoint of eval/export (default: the latest)."""
  if step is not None and mode == "train":
    raise UserError("--step applies to --mode=eval and --mode=export only")
  if mode not in ("train", "eval", "export"):
    raise UserError(f"--mode={mode!r} is not known; use train, eval or export")
  workdir = workdir if "://" in workdir else os.path.abspath(workdir)
  _check_workdir(workdir)
  is_main = jax.process_index() == 0
  # One run per workdir, and only the run it holds (ditm_jax/workdir.py).
  with workdir_lib.locked(workdir, is_main, sharding.agree):
    notes = workdir_lib.check_identity(config, workdir)
    for line in notes if is_main else ():
      print(f"note: {line}", flush=True)
    trainer = Trainer(config, workdir)
    if mode == "train":
      return trainer.train()
    if mode == "eval":
      return trainer.evaluate(step)
    return trainer.export(step)
