"""What a workdir holds besides checkpoints and metrics: whose it is, and which run it is.

- A lock (`DIR/run.lock`, JSON: host, pid, start time, command), held by process 0 for
  the whole run (`locked`). A second run on the same workdir refuses at once. A lock whose
  process is gone (same host, pid not running or reused) is stale and taken over with a
  note; a lock of another host is refused, since this host cannot tell whether its process
  runs.
- The run's identity: its config, which training writes to `DIR/config.json`. A rerun whose
  settings differ in a field outside `RESUMABLE` (model, loss, data, optimizer, seed, ...)
  stops before touching anything and lists those fields (`check_identity`); the fields of
  `RESUMABLE` (how long, how often to evaluate, log and save, where data and backbones are
  read from, the device layout) may change on resume and are listed in a note. `DERIVED`
  fields are set from the data by the trainer (`data/packing_stats.py`) and not compared.
- Damaged checkpoints: `newest_intact` walks back from the newest checkpoint to the newest
  one that restores; the damaged newer ones are moved to `DIR/set_aside/` (never deleted)
  by `set_aside`, so that the resumed run can save those steps again.

No JAX here: the caller passes whether it is process 0 and how processes agree.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys

from absl import logging as absl_logging
import tensorflow as tf

LOCK = "run.lock"
IDENTITY = "config.json"  # written by Trainer.train
SET_ASIDE = "set_aside"
ABSENT = "(absent)"  # how `differences` shows a field one side lacks
# Config fields (and every field below them) that may change when a run is resumed.
RESUMABLE = (
    "total_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
    "keep_checkpoints", "evals", "export_at_end",  # length and cadence
    "loss.collapse_gap", "data.num_dev",  # monitoring and evaluation only
    "data.dir", "data.raw_dir", "data.image_dir", "data.prefetch",  # where and how data is read
    "model.bert_path", "model.vit_path",  # where pretrained backbones are read (init only)
    "model.packing_overflow",  # packing buffers: speed only
    "mesh", "loss.sharded",  # device layout and the objective's form: same numbers
)
DERIVED = ("model.text_token_capacity", "model.region_capacity")


class WorkdirError(Exception):
  """The workdir is in use, or holds another run, or no intact checkpoint."""


# ---------------------------------------------------------------- lock


def _proc_stat(pid):
  """(state, start time in clock ticks) of `pid` from /proc, or None where unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])
  except (OSError, IndexError, ValueError):
    return None


def _running(pid, start_ticks):
  """Whether process `pid` of this host runs and is the one that started at `start_ticks`."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    pass
  stat = _proc_stat(pid)
  if stat is None:
    return True
  state, ticks = stat
  return state != "Z" and (start_ticks is None or ticks == start_ticks)


def _holder():
  """This process as a lock's holder."""
  pid = os.getpid()
  stat = _proc_stat(pid)
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  program = f"python -m {spec.name}" if spec else os.path.basename(sys.argv[0] or "python")
  return {"host": socket.gethostname(), "pid": pid, "start_ticks": stat and stat[1],
          "started": datetime.datetime.now().isoformat(timespec="seconds"),
          "command": " ".join([program] + sys.argv[1:])}


def _read_json(path):
  try:
    with tf.io.gfile.GFile(path) as f:
      return json.loads(f.read())
  except (tf.errors.NotFoundError, FileNotFoundError):
    return None
  except (ValueError, tf.errors.OpError, OSError):
    return {}  # unreadable


def _describe(holder):
  return (f"process {holder.get('pid')} on host {holder.get('host')} (started "
          f"{holder.get('started')}: {holder.get('command')})")


def _create(path, holder):
  """Creates the lock file holding `holder`; False when it exists already."""
  text = json.dumps(holder, indent=1)
  if "://" in path:  # object stores: no atomic create, check then write
    if tf.io.gfile.exists(path):
      return False
    with tf.io.gfile.GFile(path, "w") as f:
      f.write(text)
    return True
  tmp = f"{path}.{holder['pid']}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  try:
    os.link(tmp, path)  # atomic: fails when the lock exists
    return True
  except FileExistsError:
    return False
  finally:
    os.remove(tmp)


@contextlib.contextmanager
def _guard(workdir):
  """Serialises lock takeovers on this host (an flock on the workdir, where supported)."""
  if "://" in workdir:
    yield
    return
  fd = os.open(workdir, os.O_RDONLY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # file systems without flock: takeovers are not serialised
      pass
    yield
  finally:
    os.close(fd)


def acquire(workdir):
  """Locks `workdir` for this process; returns notes (a stale lock taken over).

  Raises:
    WorkdirError: another process holds it, or its lock cannot be judged.
  """
  path, me = os.path.join(workdir, LOCK), _holder()
  notes = []
  with _guard(workdir):
    while not _create(path, me):
      holder = _read_json(path)
      if holder is None:  # released meanwhile
        continue
      if not holder or "pid" not in holder:
        raise WorkdirError(f"workdir {workdir} has a lock file {path} that cannot be read; if "
                           f"no run uses this workdir, remove that file and run again")
      if holder.get("host") != me["host"]:
        raise WorkdirError(f"workdir {workdir} is locked by {_describe(holder)}; this host "
                           f"cannot tell whether that run goes on. If you are sure it has "
                           f"ended, remove {path} and run again; else pass another --workdir")
      if _running(holder["pid"], holder.get("start_ticks")):
        raise WorkdirError(f"workdir {workdir} is in use by {_describe(holder)}; wait for it to "
                           f"end or pass another --workdir")
      tf.io.gfile.remove(path)
      notes.append(f"took over the lock of {workdir} left by {_describe(holder)}, which is no "
                   f"longer running")
  return notes


def release(workdir):
  """Removes the lock of `workdir` if this process holds it."""
  path, me = os.path.join(workdir, LOCK), _holder()
  holder = _read_json(path)
  if holder and (holder.get("host"), holder.get("pid")) == (me["host"], me["pid"]):
    tf.io.gfile.remove(path)


@contextlib.contextmanager
def locked(workdir, is_main=True, agree=lambda ok: ok):
  """Holds the lock of `workdir` in process 0 (`is_main`) for the body.

  `agree(ok)` gives process 0's `ok` to every process (`sharding.agree`), so that all stop
  when process 0 cannot lock.
  """
  error, notes = None, []
  if is_main:
    try:
      notes = acquire(workdir)
    except WorkdirError as e:
      error = e
  if not agree(error is None):
    raise error or WorkdirError(f"process 0 could not lock workdir {workdir}; see its message")
  for line in notes:
    print(f"note: {line}", flush=True)
  try:
    yield
  finally:
    if is_main:
      release(workdir)


# ---------------------------------------------------------------- identity


def flat_dict(tree):
  """{'a.b': value} of every leaf of the nested dict `tree`."""
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      if isinstance(value, dict) and value:
        walk(f"{prefix}{key}.", value)
      else:
        out[prefix + key] = value
  walk("", tree)
  return out


def flat(config):
  """`flat_dict` of a ConfigDict, with JSON values (lists for tuples)."""
  return flat_dict(json.loads(config.to_json()))


def _under(field, fields):
  return any(field == f or field.startswith(f + ".") for f in fields)


def differences(recorded, current):
  """(identity fields, resumable fields) that differ: lists of (field, recorded, current).

  Both are `flat` configs; fields of DERIVED are left out. Fields absent from `recorded`
  (added to the config base after that run started) count as resumable.
  """
  absent = object()
  diffs = [(k, recorded.get(k, absent), current.get(k, absent))
           for k in sorted(set(recorded) | set(current))
           if recorded.get(k, absent) != current.get(k, absent) and not _under(k, DERIVED)]
  show = lambda v: ABSENT if v is absent else json.dumps(v)
  diffs = [(k, show(a), show(b)) for k, a, b in diffs]
  # A field the recorded run lacks was added to the config base after it started.
  allowed = lambda d: _under(d[0], RESUMABLE) or d[1] == ABSENT
  return [d for d in diffs if not allowed(d)], [d for d in diffs if allowed(d)]


def has_checkpoint(workdir):
  """Whether DIR/checkpoints holds a saved step (a directory named by an integer)."""
  root = os.path.join(workdir, "checkpoints")
  if not tf.io.gfile.isdir(root):
    return False
  return any(name.rstrip("/").isdigit() for name in tf.io.gfile.listdir(root))


def check_identity(config, workdir):
  """Notes on the RESUMABLE fields changed since the run in `workdir` (none without one).

  A workdir holds a run once it has a checkpoint; its settings are DIR/config.json.

  Raises:
    WorkdirError: the run in `workdir` has other settings outside RESUMABLE.
  """
  if not has_checkpoint(workdir):
    return []
  path = os.path.join(workdir, IDENTITY)
  recorded = _read_json(path)
  if recorded is None:  # saved by a run that was not started by Trainer.train
    return []
  if not recorded:
    raise WorkdirError(f"{path} (the settings of the run in {workdir}) cannot be read; "
                       f"restore it, or start this run in a new --workdir")
  fixed, changed = differences(flat_dict(recorded), flat(config))
  if fixed:
    listed = "; ".join(f"{k}={a} there, {b} now" for k, a, b in fixed)
    raise WorkdirError(
        f"workdir {workdir} holds a run with other settings: {listed}. To resume it, rerun "
        f"with its settings ({path}); to start this run, pass a new --workdir")
  if not changed:
    return []
  return ["changed since the run in this workdir, allowed on resume: "
          + "; ".join(f"{k}={b} (was {a})" for k, a, b in changed)]


# ---------------------------------------------------------------- damaged checkpoints


def newest_intact(steps, load):
  """(step, load(step), damaged) for the newest of `steps` that loads.

  `damaged` lists (step, why) of the newer steps whose load raised. (None, None, damaged)
  when none loads (`damaged` is empty when there are no steps).
  """
  damaged = []
  for step in sorted(steps, reverse=True):
    try:
      with quiet_absl():  # Orbax logs a damaged file itself; the caller warns in one line
        return step, load(step), damaged
    except Exception as e:  # pylint: disable=broad-except  # any failure: damaged
      lines = [l.strip() for l in str(e).splitlines() if l.strip()]
      damaged.append((step, f"damaged ({type(e).__name__}"
                            + (f": {lines[0][:200]})" if lines else ")")))
  return None, None, damaged


@contextlib.contextmanager
def quiet_absl():
  """Silences absl logging (Orbax's own report of a damaged checkpoint) inside the block."""
  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.FATAL)
  try:
    yield
  finally:
    absl_logging.set_verbosity(level)


def move_aside(root, step):
  """Moves checkpoint `step` of `root` (DIR/<name>) to DIR/set_aside/<name>/<step>."""
  root = root.rstrip("/")
  parent, name = os.path.split(root)
  target_dir = os.path.join(parent, SET_ASIDE, name)
  tf.io.gfile.makedirs(target_dir)
  target = os.path.join(target_dir, str(step))
  n = 1
  while tf.io.gfile.exists(target):
    target, n = os.path.join(target_dir, f"{step}.{n}"), n + 1
  tf.io.gfile.rename(os.path.join(root, str(step)), target)
  return target


def set_aside(root, problems, found, move, is_main=True, barrier=lambda ok: ok,
              required=True):
  """Warns about each checkpoint of `root` in `problems`, (step, why) pairs.

  `found` is the step used instead (None: none). With `move` (training), process 0 moves
  each to DIR/set_aside/ (so that the run can save that step again) and `barrier` waits for
  it on every process; the caller then reloads its checkpoint manager.

  Raises:
    WorkdirError: `required` and `found` is None (nothing is moved then).
  """
  if found is None and required:
    listed = "; ".join(f"step {s} is {why}" for s, why in problems)
    raise WorkdirError(f"no intact checkpoint in {root}: {listed}. Nothing was changed; move "
                       f"those steps out of {root} to start this run again, or pass another "
                       f"--workdir")
  for step, why in problems:
    line = f"warning: checkpoint {root}/{step} is {why}"
    if move and is_main:
      line += f"; moved to {move_aside(root, step)}"
    if is_main:
      print(line + ("" if found is None else f"; using step {found}"), file=sys.stderr,
            flush=True)
  if move:
    barrier(True)
