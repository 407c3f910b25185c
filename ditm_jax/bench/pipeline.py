"""How fast the training input is delivered, and how fast the train step consumes it.

  python -m ditm_jax.bench.pipeline --config=configs/coco.py:text=bigru,tiny \
      --config.data.dir=PREPARED [--batches=200] [--steps=30]

`pipeline_rate(config)` is what `python -m ditm_jax.bench` reports as "pipeline_rows_per_s";
`train_step_rate(config)` times the jitted train step on one fixed device-resident batch, so
the ratio of the two says whether the input can keep up. TensorFlow is imported only when a
data set is loaded, so the other benchmarks run without it.
"""

import time

import jax


def _enough_steps(config, steps):
  config = config.copy_and_resolve_references()
  config.total_steps = max(config.total_steps, steps)
  return config


def _load(config):
  from ditm_jax.data import datasets  # pylint: disable=g-import-not-at-top  (TensorFlow)
  return datasets.load(config)


def pipeline_rate(config, num_batches=200, warmup=10, data=None):
  """Batches/s, image rows/s and caption rows/s of this host's training stream.

  Args:
    config: the run config (its data set must be prepared, or be the demo).
    num_batches: batches timed, after `warmup` untimed ones.
    warmup: batches read first (tf.data start-up, first shard opened).
    data: a `datasets.Data` already loaded for `config` (loaded when None).
  """
  config = _enough_steps(config, num_batches + warmup)
  data = data or _load(config)
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


def time_pipeline(config, data, batches):
  """Rows (images) per second of the demo's training input (`pipeline_rate`)."""
  out = pipeline_rate(config, num_batches=batches, warmup=2, data=data)
  return {**out, "batches": batches, "batch_size": config.batch_size}


def train_step_rate(config, num_steps=30, warmup=3, data=None):
  """Train steps/s of `config` on one fixed batch from its pipeline (after compiling).

  The model and its packing buffers are built as the trainer builds them; one process.
  """
  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from ditm_jax import sharding
  from ditm_jax.bench import train_step
  from ditm_jax.data import packing_stats
  from ditm_jax.models import model as model_lib
  # pylint: enable=g-import-not-at-top
  config = _enough_steps(config, num_steps + warmup)
  data = data or _load(config)
  mesh = sharding.make_mesh(config)
  packing_stats.derive(config, data.train, mesh.shape[sharding.DATA])
  model = model_lib.build(config, data.vocab_size, dtype=jnp.dtype(config.dtype))
  batch = next(data.train.batches(config, 0))
  run, _, _ = train_step.step_runner(config, model, batch, mesh)
  run(warmup)
  return {"steps_per_s": num_steps / sum(run(num_steps))}


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
