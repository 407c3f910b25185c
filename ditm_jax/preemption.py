"""Preemption: SIGTERM makes the trainer save a checkpoint at the next step boundary and stop.

The signal handler only sets a flag. The trainer asks `StopRequest.agreed()` once per step.
With one process that is the flag itself. With several, each call starts a tiny jitted max
over one flag per device (a global array from every process's flag) and returns the result
of the previous call's max, so all processes see the same answer at the same step, one step
after the signal, without waiting on the collective they just started.

The stopped run exits with status 143 (128 + SIGTERM, what a shell reports for a process
killed by SIGTERM): schedulers and retry loops treat it as interrupted, not finished, and
the same command resumes from the saved checkpoint.
"""

import signal
import threading

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

EXIT_CODE = 128 + signal.SIGTERM


class Preempted(Exception):
  """Training stopped on SIGTERM after saving the checkpoint of `step`."""

  def __init__(self, step, workdir):
    super().__init__(f"stopped by SIGTERM after step {step}; its checkpoint is saved in "
                     f"{workdir}/checkpoints. Run the same command again to resume.")
    self.step = step


class StopRequest:
  """SIGTERM handler plus an all-process agreement on stopping (see the module docstring)."""

  def __init__(self, mesh, axis="data", signals=(signal.SIGTERM,)):
    self._flag = False
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for s in signals:
        self._previous[s] = signal.signal(s, self._handle)
    self._pending = None
    self._multi = jax.process_count() > 1
    if self._multi:
      self._sharding = NamedSharding(mesh, P(axis))
      self._local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
      self._max = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, P()))

  def _handle(self, signum, frame):
    del signum, frame
    self._flag = True

  def agreed(self):
    """Whether to stop now; every process must call this once per step."""
    if not self._multi:
      return self._flag
    flags = np.full((self._local,), self._flag, np.int32)
    current = self._max(jax.make_array_from_process_local_data(self._sharding, flags))
    previous, self._pending = self._pending, current
    return previous is not None and bool(jax.device_get(previous))

  def close(self):
    """Restores the previous signal handlers."""
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
