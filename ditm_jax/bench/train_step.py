"""Train step timing: the trainer's own `step.train_step`, its pieces, and its matmul utilisation.

A step is timed on one fixed batch, state threaded from step to step (donated) as in training:
the median of several steps after two warm-up steps (the first compiles).
"""

import statistics
import time

import jax
import jax.numpy as jnp

from ditm_jax import losses
from ditm_jax import sharding
from ditm_jax import step as step_lib
from ditm_jax.bench import flops
from ditm_jax.models import gpo
from ditm_jax.models import packed


def step_runner(config, model, batch, mesh=None):
  """(run(n) -> seconds of each of n more train steps, matmul FLOPs, devices), compiled once.

  The first call of `run` includes the compilation. State is threaded from step to step, as
  in training (donated), on the same global batch.
  """
  mesh = mesh or sharding.make_mesh(config)
  built = step_lib.setup(config, model, step_lib.make_optimizer(config), mesh, batch)
  step_fn = built.step
  matmul_flops = flops.matmul_flops(built.step_fn, built.abstract, jax.tree.map(jnp.asarray, batch))
  global_batch = sharding.global_batch(built.batch_sharding, batch)
  live = {"state": built.init(jax.random.key(config.seed))}

  def run(n):
    times = []
    for _ in range(n):
      t = time.perf_counter()
      live["state"], live["metrics"] = step_fn(live["state"], global_batch)
      jax.block_until_ready((live["state"], live["metrics"]))
      times.append(time.perf_counter() - t)
    run.loss = float(live["metrics"]["train/loss"])
    return times
  return run, matmul_flops, int(mesh.devices.size)


def time_train_step(config, model, batch, steps=5, mesh=None):
  """Seconds per `step.train_step` on `batch` (global numpy batch): median after warm-up.

  Returns a dict: median_s, pairs_per_s, compile_s (first step, compile included), steps,
  devices, matmul_flops (of the step's program, `flops.matmul_flops`: all devices together)
  and matmul_flops_per_s.
  """
  run, matmul_flops, devices = step_runner(config, model, batch, mesh)
  times = run(steps + 2)
  median = statistics.median(times[2:])
  pairs = config.batch_size * config.data.captions_per_image
  return {"median_s": median, "pairs_per_s": pairs / median, "compile_s": times[0],
          "steps": steps, "devices": devices, "loss": run.loss, "matmul_flops": matmul_flops,
          "matmul_flops_per_s": matmul_flops / median}


def profile_reference(config, model, batch):
  """Seconds of the reference step's pieces (forward+backward of each tower, the loss)."""
  params = jax.jit(model.init)(jax.random.key(0), jax.tree.map(jnp.asarray, batch))["params"]
  batch = jax.tree.map(jnp.asarray, batch)

  def tower_grad(name, method):  # the batch is an argument, as in training (not a constant)
    def grad(p, batch):  # packed or padded as the train step chooses (one cond)
      return packed.select_packing(model, lambda m: jax.grad(
          lambda p: jnp.sum(m.apply({"params": p}, batch, method=method) ** 2))(p), batch)
    return name, jax.jit(grad), (params, batch)

  img, txt, _ = jax.jit(model.apply)({"params": params}, batch)
  kwargs = dict(matching="triplet", temperature=0.05, margin=0.2, max_violation=True, beta=0.0,
                relax_temp=0.05, order_weight=0.0, order_gamma=0.2, order_min_gap=0.05,
                relax_warmup_steps=0)
  loss_grad = jax.jit(jax.grad(lambda i, t: losses.objective(
      i, t, batch["image_ids"], batch["desc"], step=0, **kwargs)[0], argnums=(0, 1)))

  def gpo_only(tower):
    sub = params[tower]["gpo"]
    feats = jax.random.normal(jax.random.key(1), (128, 36 if tower == "image_tower" else 32, 1024))
    mask = batch["region_mask"] if tower == "image_tower" else batch["token_mask"]
    fn = jax.jit(jax.grad(lambda p, x, m: jnp.sum(gpo.GPO().apply({"params": p}, x, m) ** 2),
                          argnums=(0, 1)))
    return f"{tower} GPO fwd+bwd", fn, (sub, feats, mask)

  pieces = [tower_grad("image tower fwd+bwd", "embed_images"),
            tower_grad("text tower fwd+bwd", "embed_texts"),
            ("triplet loss fwd+bwd", loss_grad, (img, txt)),
            gpo_only("image_tower"), gpo_only("text_tower")]
  out = {}
  for name, fn, args in pieces:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(3):
      t = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - t)
    out[name] = statistics.median(times)
  return out


def utilisation(results, dtype):
  """Adds `matmul_peak` (measured, and the datasheet's where known) and, to every reference
  row of `results["train_step"]`, its share of those peaks (`flops.matmul_flops` per step /
  median seconds / peak)."""
  device = jax.devices()[0]
  peak = flops.measured_matmul_peak(dtype=dtype)
  peak["spec_flops_per_s"] = flops.spec_peak(device.device_kind, dtype)
  results["matmul_peak"] = peak
  for name, row in results["train_step"].items():
    if name.startswith("reference"):
      per_device = row["matmul_flops_per_s"] / row["devices"]
      row["share_of_measured_peak"] = per_device / peak["flops_per_s"]
      if peak["spec_flops_per_s"]:
        row["mfu"] = per_device / peak["spec_flops_per_s"]
