"""What machine a benchmark ran on, and how much memory it took."""

import os
import platform
import resource

import jax


def machine():
  """CPU model, cores, load, and what JAX sees."""
  model = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    model = names[0] if names else model
  except OSError:
    pass
  return {
      "cpu": model,
      "logical_cores": os.cpu_count(),
      "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "load_average_1_5_15": load_average(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "device_kind": jax.devices()[0].device_kind,
      "process_count": jax.process_count(),
  }


def load_average():
  """The 1, 5 and 15 minute load averages: a busy machine makes every timing slower."""
  return [round(v, 2) for v in os.getloadavg()]


def peak_rss_mb():
  """Peak resident memory of this process (and, separately, of finished children), MiB."""
  own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  return round(own, 1), round(children, 1)
