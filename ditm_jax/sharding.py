"""The one mesh, and how batches and state are laid out on it."""

import math

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA = "data"

def make_mesh(config):
  """A 1-D `data` mesh over `config.mesh.data` devices (-1 = all), Auto axis type."""
  devices = jax.devices()
  n = config.mesh.data if config.mesh.data > 0 else len(devices)
  if n > len(devices) or len(devices) % n:
    raise ValueError(f"config.mesh.data={config.mesh.data} does not divide the "
                     f"{len(devices)} visible devices")
  return Mesh(np.asarray(devices[:n]), (DATA,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh):
  """Leading (batch) dimension split over the data axis."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh):
  return NamedSharding(mesh, P())


def fsdp_spec(shape, devices, min_size):
  """PartitionSpec of one array of `shape` under FSDP over `devices` devices.

  Arrays of at least `min_size` elements put their largest dimension divisible by `devices`
  (the first on ties) on the data axis; others stay replicated.
  """
  if devices <= 1 or math.prod(shape) < min_size:
    return P()
  dims = [i for i, n in enumerate(shape) if n % devices == 0]
  if not dims:
    return P()
  axis = max(dims, key=lambda i: (shape[i], -i))
  return P(*([None] * axis), DATA)


def state_shardings(mesh, abstract_state, config):
  """Shardings of the train state (parameters, optimizer state, counters).

  Replicated by default. With `config.mesh.fsdp`, every array of at least
  `config.mesh.fsdp_min_size` elements is split over the data axis along its largest
  divisible dimension (`fsdp_spec`); the optimizer moments have their parameters' shapes,
  so they follow them. The train step (`data_parallel`) all-gathers the parameters for the
  forward and backward pass and reduce-scatters their gradients; the optimizer update runs
  on the shards.
  """
  if not config.mesh.fsdp:
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)
  devices = mesh.shape[DATA]
  min_size = config.mesh.fsdp_min_size
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(x.shape, devices, min_size)), abstract_state)


def param_specs(mesh, params, config):
  """PartitionSpecs of `params` in the state layout of `state_shardings`."""
  return jax.tree.map(lambda s: s.spec, state_shardings(mesh, params, config))


def data_parallel(fn, mesh, params, config, out_specs):
  """`fn(params, batch)` run by each device on its rows of the batch (a shard_map).

  Parameters enter in their state layout: replicated, or FSDP-sharded and all-gathered
  here. Their gradient is then reduced once over the axis, at the shard_map's boundary
  (an all-reduce, or a reduce-scatter under FSDP), after the backward pass. Left to XLA's
  automatic partitioning, the weight gradient of a recurrent scan (GRU, GPO) is
  all-reduced inside the loop, at every time step: hundreds of small collectives a step.
  `fn` must treat examples independently (no batch statistics). Replication is not
  type-checked here (`check_vma=False`: Flax's recurrent carries start unvarying).
  """
  specs = param_specs(mesh, params, config)

  def local(params, batch):
    def full(x, spec):
      for dim, name in enumerate(spec):
        if name is not None:
          return jax.lax.all_gather(x, DATA, axis=dim, tiled=True)
      return x
    return fn(jax.tree.map(full, params, specs), batch)

  return lambda params, batch: jax.shard_map(
      local, mesh=mesh, in_specs=(specs, P(DATA)), out_specs=out_specs,
      check_vma=False)(params, batch)


def global_batch(sharding, local_batch):
  """Assembles the global batch from this process's rows (per-host input)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def agree(value):
  """Process 0's `value` (a number or bool) on every process, for host-side decisions that
  lead to collectives (a checkpoint save must be entered by all processes or none)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  # No stable spelling of this broadcast exists yet.
  return type(value)(multihost_utils.broadcast_one_to_all(np.asarray(value)))
