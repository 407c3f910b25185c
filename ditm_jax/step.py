"""The optimisation step: train state, optimizer, the pure `train_step`, and `setup`, which
builds the abstract state, its shardings and the jitted init and step on a mesh.

Nothing here reads data or files (no TensorFlow): the trainer (`train.py`), `retrieve` and
the benchmarks build their state and step with `setup`.
"""

import functools
import math
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import optax

from ditm_jax import losses
from ditm_jax import losses_sharded
from ditm_jax import sharding
from ditm_jax.models import model as model_lib
from ditm_jax.models import packed


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  bad_step: jax.Array  # first step whose loss was non-finite, -1 while none


def new_state(params, tx):
  """The state at step 0 of `params`: fresh optimizer state of `tx`, no bad step."""
  return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                    bad_step=jnp.int32(-1))


def init_state(model, tx, example, rng):
  """`new_state` of `model`'s random parameters for batches shaped like `example`.

  Pure: jit it with the state's shardings, or `jax.eval_shape` it for the abstract state.
  """
  return new_state(model.init(rng, example)["params"], tx)


class Setup(NamedTuple):
  """What `setup` builds: the state's abstract shapes and shardings, init and step."""
  abstract: Any  # TrainState of jax.ShapeDtypeStruct, each with its sharding (for restoring)
  shardings: Any  # TrainState of NamedSharding
  init: Callable  # jitted: rng -> state, born in `shardings`
  step: Callable  # jitted: (state, global batch) -> (state, metrics), state donated
  step_fn: Callable  # the same step, not jitted (for cost analysis)
  batch_sharding: Any


def setup(config, model, tx, mesh, example):
  """Abstract state first: `jax.eval_shape` the state of batches shaped like `example` (a
  global batch of NumPy arrays), derive its shardings on `mesh`, jit init straight into them
  and the train step with them."""
  example = jax.tree.map(jnp.asarray, example)
  init = functools.partial(init_state, model, tx, example)
  shapes = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.state_shardings(mesh, shapes, config)
  abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                          shapes, shardings)
  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = functools.partial(train_step, model=model, tx=tx, config=config, mesh=mesh)
  step = jax.jit(step_fn, in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, None), donate_argnums=(0,))
  return Setup(abstract, shardings, jax.jit(init, out_shardings=shardings), step, step_fn,
               batch_sharding)


def loss_kwargs(config):
  """The static keyword arguments of `losses.objective` from `config.loss`."""
  l = config.loss
  return dict(matching=l.matching, margin=l.margin, max_violation=l.max_violation,
              beta=l.relax_beta, relax_temp=l.relax_temp, order_weight=l.order_weight,
              order_gamma=l.order_gamma, order_min_gap=l.order_min_gap,
              relax_warmup_steps=l.relax_warmup_steps,
              sum_violation_steps=l.sum_violation_steps, relax_budget=l.relax_budget,
              target_grading=l.target_grading)


def temperature(config, log_temperature):
  """tau: fixed from config, or learned (log-parameterised, clipped to [0.01, 1])."""
  if config.loss.learn_temperature:
    return jnp.exp(jnp.clip(log_temperature, math.log(0.01), 0.0))
  return jnp.float32(config.loss.temperature)


def param_labels(config, params):
  """Optimizer group of every parameter: 'default', 'text_backbone', 'image_backbone', 'frozen'.

  Pretrained backbones (`model_lib.BACKBONES`) get their own learning rate, or are 'frozen' by
  `config.model.freeze_text_backbone` / `freeze_image_backbone`.
  """
  m = config.model
  frozen = {"text_backbone": m.freeze_text_backbone, "image_backbone": m.freeze_image_backbone}

  def label(path, _):
    keys = tuple(str(getattr(p, "key", p)) for p in path)
    if keys[-1] == "log_temperature" and not config.loss.learn_temperature:
      return "frozen"
    group = model_lib.backbone_group(keys)
    if group is None:
      return "default"
    return "frozen" if frozen[group] else group
  return jax.tree_util.tree_map_with_path(label, params)


def lr_schedule(config):
  """Learning rate by step: linear warm-up, then `optim.schedule`.

  'cosine': cosine decay to 0 at total_steps; a warm-up that leaves no step to decay is
  clamped to total_steps - 1 (`validate` notes it). 'step': constant, times
  `optim.decay_factor` from each step in `optim.decay_steps` on (VSE-infinity: x0.1 from
  epoch 15).
  """
  o = config.optim
  kind = o.schedule
  if kind == "cosine":
    decay_steps = max(config.total_steps, 2)
    return optax.warmup_cosine_decay_schedule(
        0.0, o.lr, warmup_steps=min(max(o.warmup_steps, 1), decay_steps - 1),
        decay_steps=decay_steps)
  if kind == "step":
    constant = optax.piecewise_constant_schedule(
        o.lr, {max(int(s) - o.warmup_steps, 0): o.decay_factor for s in o.decay_steps})
    if not o.warmup_steps:
      return constant
    return optax.join_schedules([optax.linear_schedule(0.0, o.lr, o.warmup_steps), constant],
                                [o.warmup_steps])
  raise ValueError(f"config.optim.schedule={kind!r} is not known; use 'cosine' or 'step'")


def make_optimizer(config):
  """AdamW with warm-up + cosine decay; backbones at lr x model.{text,image}_lr_mult.

  Frozen parameters get zero gradients before the global-norm clip and zero updates (no
  weight decay), so the clip sees the trainable parameters only.
  """
  o, m = config.optim, config.model
  schedule = lr_schedule(config)
  lr_mult = {"default": 1.0, "text_backbone": m.text_lr_mult,
             "image_backbone": m.image_lr_mult}

  def adamw(mult):
    lr = schedule if mult == 1.0 else (lambda step: mult * schedule(step))
    return optax.adamw(lr, weight_decay=o.weight_decay)

  labels = functools.partial(param_labels, config)
  is_frozen = lambda tree: jax.tree.map(lambda l: l == "frozen", labels(tree))
  groups = {name: adamw(mult) for name, mult in lr_mult.items()}
  groups["frozen"] = optax.set_to_zero()
  return optax.chain(optax.masked(optax.set_to_zero(), is_frozen),
                     optax.clip_by_global_norm(o.grad_clip),
                     optax.multi_transform(groups, labels))


def train_step(state, batch, *, model, tx, config, mesh=None):
  """One optimisation step: (state, global batch) -> (state, metrics). Pure.

  With a `mesh`, each device embeds its rows of the batch (`sharding.data_parallel`) and
  the objective is the shard_map form (`losses_sharded`) when `config.loss.sharded`, else
  the plain global form.
  """
  objective = losses.objective
  if mesh is not None and config.loss.sharded:
    objective = functools.partial(losses_sharded.objective, mesh=mesh, axis=sharding.DATA)

  def value_and_grad(model):
    def embed(params, batch):
      img, txt, _ = model.apply({"params": params}, batch)
      return img, txt
    if mesh is not None:  # each device embeds its rows; one gradient reduction at the end
      embed = sharding.data_parallel(embed, mesh, state.params, config,
                                     out_specs=(P(sharding.DATA), P(sharding.DATA)))

    def loss_fn(params):
      img, txt = embed(params, batch)
      return objective(img, txt, batch["image_ids"], batch["desc"],
                       temperature=temperature(config, params["log_temperature"]),
                       step=state.step, **loss_kwargs(config))
    return jax.value_and_grad(loss_fn, has_aux=True)(state.params)

  # Towers that pack their valid tokens/regions do so when this batch fits on every device.
  shards = 1 if mesh is None else mesh.shape[sharding.DATA]
  (loss, terms), grads = packed.select_packing(model, value_and_grad, batch, shards)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ok = jnp.isfinite(loss)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
  new_state = state.replace(
      step=state.step + 1, params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      bad_step=jnp.where(ok | (state.bad_step >= 0), state.bad_step, state.step))
  metrics = {f"train/{k}": v for k, v in terms.items()}
  metrics["train/grad_norm"] = optax.global_norm(grads)
  metrics["train/temperature"] = temperature(config, state.params["log_temperature"])
  return new_state, metrics
