"""How fast the training input is delivered, and how fast the train step consumes it.

  python -m ditm_jax.data.throughput --config=configs/coco.py:text=bigru,tiny \
      --config.data.dir=PREPARED [--batches=200] [--steps=30]

`pipeline_rate(config)` is what `python -m ditm_jax.bench` reports as "pipeline_rows_per_s";
`train_step_rate(config)` times the jitted train step on one fixed device-resident batch, so
the ratio of the two says whether the input can keep up.
"""

import functools
import tempfile
import time

import jax

from ditm_jax.data import datasets


def _enough_steps(config, steps):
  config = config.copy_and_resolve_references()
  config.total_steps = max(config.total_steps, steps)
  return config


def pipeline_rate(config, num_batches=200, warmup=10, data=None):
  """Batches/s, image rows/s and caption rows/s of this host's training stream.

  Args:
    config: the run config (its data set must be prepared, or be the demo).
    num_batches: batches timed, after `warmup` untimed ones.
    warmup: batches read first (tf.data start-up, first shard opened).
    data: a `datasets.Data` already loaded for `config` (loaded when None).
  """
  config = _enough_steps(config, num_batches + warmup)
  data = data or datasets.load(config)
  batches = data.train.batches(config, 0, jax.process_index(), jax.process_count())
  for _ in range(warmup):
    next(batches)
  t0 = time.perf_counter()
  for _ in range(num_batches):
    batch = next(batches)
  seconds = time.perf_counter() - t0
  return {"batches_per_s": num_batches / seconds,
          "rows_per_s": num_batches * len(batch["image_ids"]) / seconds,
          "captions_per_s": num_batches * len(batch["desc"]) / seconds,
          "batch_mb": sum(v.nbytes for v in batch.values()) / 2**20}


def train_step_rate(config, num_steps=30, warmup=3, workdir=None):
  """Train steps/s of `config` on one fixed batch from its pipeline (after compiling)."""
  from ditm_jax import sharding  # pylint: disable=g-import-not-at-top
  from ditm_jax import step as step_lib  # pylint: disable=g-import-not-at-top
  from ditm_jax import train  # pylint: disable=g-import-not-at-top
  config = _enough_steps(config, num_steps + warmup)
  with tempfile.TemporaryDirectory() as tmp:
    trainer = train.Trainer(config, workdir or tmp)
    local = next(trainer.data.train.batches(config, 0, jax.process_index(),
                                            jax.process_count()))
    batch = sharding.global_batch(trainer.batch_sharding, local)
    step = jax.jit(functools.partial(step_lib.train_step, model=trainer.model,
                                     tx=trainer.tx, config=config, mesh=trainer.mesh),
                   in_shardings=(trainer.state_sharding, trainer.batch_sharding),
                   out_shardings=(trainer.state_sharding, None), donate_argnums=(0,))
    state = trainer.initial_state()
    for _ in range(warmup):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(num_steps):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return {"steps_per_s": num_steps / (time.perf_counter() - t0)}


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  config = flags.FLAGS.config
  feed = pipeline_rate(config, flags.FLAGS.batches)
  print(f"pipeline: {feed['batches_per_s']:.1f} batches/s, {feed['rows_per_s']:.0f} images/s, "
        f"{feed['captions_per_s']:.0f} captions/s ({feed['batch_mb']:.1f} MB per batch)")
  if flags.FLAGS.steps:
    steps = train_step_rate(config, flags.FLAGS.steps)["steps_per_s"]
    print(f"train step: {steps:.1f} steps/s; the pipeline delivers "
          f"{feed['batches_per_s'] / steps:.1f}x that", flush=True)


def _cli():
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/coco.py:tiny.")
  flags.DEFINE_integer("batches", 200, "Batches timed.")
  flags.DEFINE_integer("steps", 30, "Train steps timed (0: skip).")
  app.run(main)


if __name__ == "__main__":
  _cli()
