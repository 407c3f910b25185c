"""The one mesh, and how batches and state are laid out on it."""

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


def state_shardings(mesh, abstract_state, config):
  """Shardings of the train state: replicated parameters and optimizer state."""
  del config
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def global_batch(sharding, local_batch):
  """Assembles the global batch from this process's rows (per-host input)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
