"""The one trainer: the train loop, and evaluate / export of a checkpoint, driven by a config.

What it is built from lives elsewhere: the state and jitted step (`step.setup`), checkpoints
(`checkpoints.py`), metrics (`metrics.py`), evaluation (`evaluate.py`), data (`data/`).
"""

import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import tensorflow as tf

from ditm_jax import checkpoints as checkpoints_lib
from ditm_jax import collapse
from ditm_jax import evaluate as evaluate_lib
from ditm_jax import metrics as metrics_lib
from ditm_jax import preemption
from ditm_jax import sharding
from ditm_jax import step as step_lib
from ditm_jax import workdir as workdir_lib
from ditm_jax.data import datasets
from ditm_jax.data import packing_stats
from ditm_jax.data import tooling
from ditm_jax.models import model as model_lib


class UserError(Exception):
  """An error the user can fix (bad config, bad data, unwritable workdir)."""


class NonFiniteLoss(UserError):
  """The loss became NaN/inf; the last good checkpoint is kept."""


class Trainer:
  """Builds mesh, data, model, optimizer, state and checkpoints once; runs the modes."""

  def __init__(self, config, workdir):
    self.workdir = workdir
    self.is_main = jax.process_index() == 0
    self.mesh = sharding.make_mesh(config)
    devices = self.mesh.devices.size
    if config.batch_size % devices:
      raise UserError(f"config.batch_size={config.batch_size} must be a multiple of the "
                      f"{devices} devices on the data axis")
    self.data = datasets.load(config)
    # Packing buffers sized from the training data (a copy: the caller's config is left as is).
    self.config = config = config.copy_and_resolve_references()
    self.packing_notes = packing_stats.derive(config, self.data.train,
                                              self.mesh.shape[sharding.DATA])
    self.model = model_lib.build(config, self.data.vocab_size, dtype=jnp.dtype(config.dtype))
    self.setup = step_lib.setup(config, self.model, step_lib.make_optimizer(config), self.mesh,
                                tooling.example_batch(config, devices))
    self.checkpoints = checkpoints_lib.Checkpoints(workdir, config.keep_checkpoints,
                                                   self.setup.abstract, config)
    self.writer = metrics_lib.MetricsWriter(workdir, enabled=self.is_main)
    self.embedding = evaluate_lib.Embedding(self.model, self.mesh, config)

  def evaluator(self, which="all"):
    return evaluate_lib.Evaluator(self.embedding, self.data, self.workdir, self.writer, which)

  def initial_state(self):
    """Random init, then any pretrained backbones copied in (in the state's shardings)."""
    state = self.setup.init(jax.random.key(self.config.seed))
    pretrained = model_lib.pretrained_params(self.config)
    if not pretrained:
      return state
    return state.replace(params=model_lib.merge_pretrained(state.params, pretrained))

  # ---------------------------------------------------------------- train
  def train(self):
    config, ckpt = self.config, self.checkpoints
    state = ckpt.restore(set_aside=True)
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
    if self.is_main:  # the packing buffers chosen, and the run's config (its identity)
      for line in self.packing_notes:
        print(f"Packing: {line}", flush=True)
      with tf.io.gfile.GFile(tf.io.gfile.join(self.workdir, workdir_lib.IDENTITY), "w") as f:
        f.write(config.to_json(indent=1))
    batches = self.data.train.batches(config, start, jax.process_index(), jax.process_count())
    evaluator = self.evaluator()
    best_rsum = ckpt.best_rsum(start)
    pairs = config.batch_size * config.data.captions_per_image
    t0, s0 = time.perf_counter(), start
    metrics = None
    stop = preemption.StopRequest(self.mesh, sharding.DATA)
    for local in batches:
      batch = sharding.global_batch(self.setup.batch_sharding, local)
      state, metrics = self.setup.step(state, batch)
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
          ckpt.save(state, best=True, rsum=best_rsum)
      if step % config.checkpoint_every_steps == 0 or step == config.total_steps:
        self._check_finite(state)
        ckpt.save(state)
      if due or step % config.checkpoint_every_steps == 0:
        t0, s0 = time.perf_counter(), step  # step rates exclude evaluation and saving
      if step < config.total_steps and stop.agreed():  # SIGTERM: save, then stop
        if step % config.checkpoint_every_steps:
          self._check_finite(state)
          ckpt.save(state)
        ckpt.wait()
        stop.close()
        raise preemption.Preempted(step, self.workdir)
    stop.close()
    if metrics is None and self.is_main:
      print(f"Already trained to step {start}; nothing to do.", flush=True)
    ckpt.wait()
    if metrics is None:  # evaluators (exports included) still run on the restored state
      evaluator.run(state.params, int(state.step), write=False)
    final = evaluator.latest
    metrics_lib.print_table(final)
    evaluate_lib.write_plots(self.workdir, self.data, evaluator.embedder, self.writer.rows)
    return final

  def _check_finite(self, state):
    bad = int(jax.device_get(state.bad_step))
    if bad < 0:
      return True
    ids = self.data.train.step_image_ids(self.config, bad)
    last = self.checkpoints.latest.latest_step()
    raise NonFiniteLoss(
        f"non-finite loss at step {bad} (batch of image ids {ids[:8].tolist()}"
        f"{'...' if len(ids) > 8 else ''}); the last good checkpoint is step {last} in "
        f"{self.workdir}/checkpoints. Lower config.optim.lr or check the data for NaN/inf.")

  # ---------------------------------------------------------------- eval/export
  def _restored(self, step=None):
    if step is not None and step not in self.checkpoints.steps():
      raise UserError(f"no checkpoint of step {step} in {self.workdir}/checkpoints (have "
                      f"{self.checkpoints.steps()}); pass one of those to --step")
    state = self.checkpoints.restore(step)
    if state is None:
      raise UserError(f"no checkpoint in {self.workdir}/checkpoints; train first "
                      "(--mode=train) or pass the workdir of a trained run")
    return state

  def evaluate(self, step=None):
    """Metric evaluators at checkpoint `step` (default latest): eval_results.json/.md, plots."""
    state = self._restored(step)
    evaluator = self.evaluator("metrics")
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
    metrics_lib.write_results(self.workdir, int(state.step), results)
    metrics_lib.print_table(results)
    evaluate_lib.write_plots(self.workdir, self.data, evaluator.embedder, self.writer.rows)
    return results

  def export(self, step=None):
    """Export evaluators (or every evaluated split) at checkpoint `step` (default latest)."""
    state = self._restored(step)
    self.evaluator("exports").run(state.params, int(state.step), write=False)
    return os.path.join(self.workdir, "export")


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
