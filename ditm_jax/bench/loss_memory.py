"""The part that needs 8 devices: the objective's memory per device, plain against `shard_map`,
and the demo step with each form. `run_devices8` runs it in a child process with 8 CPU devices
(`python -m ditm_jax.bench --part=devices8`), as JAX fixes its device count at start-up."""

import functools
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ditm_jax import losses
from ditm_jax import losses_sharded
from ditm_jax import sharding
from ditm_jax.bench import setups
from ditm_jax.bench import train_step


def loss_memory(mesh, batch_size=4096, captions_per_image=2, dim=1024):
  """Compiled per-device temporary memory (bytes) of the objective's value and gradient.

  For each matching ('triplet' as in `ditm`: hardest negative after a sum-over-negatives
  warm-up, relaxation and ordering on; 'infonce' with both terms), with the embeddings split
  over `mesh`: the plain global form, the shard_map form (`losses_sharded`), and the plain
  form on one device (what a single device would need). From
  `jax.jit(...).lower(...).compile().memory_analysis().temp_size_in_bytes`.
  """
  b, bk = batch_size, batch_size * captions_per_image
  out = {"batch_size": b, "captions_per_image": captions_per_image, "dim": dim,
         "devices": int(mesh.devices.size), "logits_bytes": b * bk * 4}
  one = Mesh(mesh.devices.reshape(-1)[:1], (sharding.DATA,), axis_types=mesh.axis_types)
  for matching in ("triplet", "infonce"):
    kwargs = dict(matching=matching, temperature=0.05, margin=0.2, max_violation=True,
                  beta=0.5, relax_temp=0.05, order_weight=1.0, order_gamma=0.2,
                  order_min_gap=0.05, relax_warmup_steps=100,
                  sum_violation_steps=100 if matching == "triplet" else 0)

    def temp_bytes(objective, on_mesh):
      split = NamedSharding(on_mesh, P(sharding.DATA))
      spec = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype, sharding=split)
      fn = jax.jit(jax.value_and_grad(lambda img, txt, ids, d, step: objective(
          img, txt, ids, d, step=step, **kwargs)[0], argnums=(0, 1)))
      compiled = fn.lower(spec((b, dim)), spec((bk, dim)), spec((b,), jnp.int32), spec((bk,)),
                          jax.ShapeDtypeStruct((), jnp.int32)).compile()
      return int(compiled.memory_analysis().temp_size_in_bytes)

    out[matching] = {
        "plain_temp_bytes": temp_bytes(losses.objective, mesh),
        "sharded_temp_bytes": temp_bytes(
            functools.partial(losses_sharded.objective, mesh=mesh), mesh),
        "one_device_temp_bytes": temp_bytes(losses.objective, one),
    }
  return out


def devices8_part(quick):
  """The 8-device measurements (run in a child with 8 CPU devices)."""
  config, data, model = setups.demo_setup("tiny" if quick else None)
  mesh = sharding.make_mesh(config)
  batch = next(data.train.batches(config, 0))
  steps = {}
  for sharded in (False, True):
    config.loss.sharded = sharded
    steps["sharded" if sharded else "plain"] = train_step.time_train_step(
        config, model, batch, steps=2 if quick else 10, mesh=mesh)
  memory = loss_memory(mesh, batch_size=256 if quick else 4096)
  return {"devices": len(jax.devices()), "demo_train_step": steps, "loss_memory": memory,
          "config": "configs/demo.py" + (":tiny" if quick else "")}


def run_devices8(quick):
  """`devices8_part`'s results from a child process with 8 CPU devices, or {"error": ...}."""
  root = setups.ROOT
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "devices8.json")
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=8").strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    cmd = [sys.executable, "-m", "ditm_jax.bench", "--part=devices8", f"--out={out}"]
    if quick:
      cmd.append("--quick")
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode:
      return {"error": proc.stderr[-2000:]}
    with open(out) as f:
      return json.load(f)
