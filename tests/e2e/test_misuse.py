"""The trainer under misuse, crashes and concurrent runs, through `python -m ditm_jax.main`
on the tiny demo: exit status, one readable line, and the files already in the workdir
unchanged by a refused run.

Refused before any work: an invalid config field (status 2), other settings than the run in
the workdir, no intact checkpoint (status 1). Recovered with a note or warning: a warm-up
longer than the run, a damaged newest checkpoint, a stale lock, a kill in the middle of a
save, a torn last line of metrics.jsonl. A second run on a workdir in use refuses while the
first finishes unharmed. The loss functions under jax_enable_x64: also property-tested in
float64 (test_losses_properties.py).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests import e2e_util as e2e

TINY = "configs/demo.py:tiny"


def files(workdir):
  """{relative path: sha256} of every file below `workdir`."""
  out = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return out


def one_error_line(proc, status):
  """The single `error: ...` line of a refused run (nothing else on stderr)."""
  assert proc.returncode == status, (proc.returncode, proc.stderr[-3000:])
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  return lines[0]


@pytest.fixture
def finished(tiny_demo, tmp_path):
  """A copy of the trained tiny demo (checkpoints 20 and 40, best 40, export, metrics)."""
  workdir = tmp_path / "run"
  shutil.copytree(tiny_demo[0], workdir)
  return workdir


def damage(checkpoint):
  """Overwrites a few files of `checkpoint` with bytes that are not what they held."""
  for name in ("_CHECKPOINT_METADATA", "meta/metadata", "state/manifest.ocdbt"):
    (checkpoint / name).write_bytes(b"\xc4 not a checkpoint file")


@pytest.mark.parametrize("override, expected", [
    ("--config.optim.lr=-1", "error: config.optim.lr=-1.0 must be > 0 (peak learning rate); "
                             "pass --config.optim.lr=N with N > 0"),
    ("--config.batch_size=0", "error: config.batch_size=0 must be an integer > 0 (global batch, "
                              "in images); pass --config.batch_size=N with N an integer > 0"),
], ids=["lr", "batch_size"])
def test_an_invalid_field_is_refused_with_status_2(finished, override, expected):
  before = files(finished)
  proc = e2e.run(TINY, finished, override, check=False)
  assert one_error_line(proc, 2) == expected
  assert files(finished) == before


def test_other_settings_are_refused_naming_the_fields(finished):
  before = files(finished)
  proc = e2e.run(TINY, finished, "--config.model.embed_dim=32", check=False)
  assert one_error_line(proc, 1) == (
      f"error: workdir {finished} holds a run with other settings: model.embed_dim=64 there, "
      f"32 now. To resume it, rerun with its settings ({finished}/config.json); to start this "
      "run, pass a new --workdir")
  assert files(finished) == before


def test_no_intact_checkpoint_is_one_error_and_changes_nothing(finished):
  for step in ("20", "40"):
    damage(finished / "checkpoints" / step)
  before = files(finished)
  proc = e2e.run(TINY, finished, "--config.total_steps=60", check=False)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(errors) == 1 and errors[0].startswith(
      f"error: no intact checkpoint in {finished}/checkpoints: step 40 is damaged ("), errors
  assert "step 20 is damaged (" in errors[0] and "Nothing was changed" in errors[0]
  assert files(finished) == before


def test_a_damaged_checkpoint_is_set_aside_and_a_second_run_refused(tiny_demo, finished):
  """The newest checkpoint damaged: the rerun warns, resumes from the one before and ends as
  the uninterrupted run did; a second run started on the workdir meanwhile refuses at once.
  (The same command as the trained run: its compiled programs are in the test cache.)"""
  damage(finished / "checkpoints" / "40")
  damaged = {k: v for k, v in files(finished).items() if k.startswith("checkpoints/40/")}
  first = subprocess.Popen(e2e.command(TINY, finished), cwd=e2e.ROOT, env=e2e.env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    lock = finished / "run.lock"
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    assert lock.exists(), "the first run never took the lock"
    holder = json.loads(lock.read_text())
    assert holder["pid"] == first.pid
    second = e2e.run(TINY, finished, check=False)
    assert first.poll() is None, "the first run ended before the second was refused"
    out, err = first.communicate(timeout=300)
  finally:
    first.kill()
  assert one_error_line(second, 1) == (
      f"error: workdir {finished} is in use by process {first.pid} on host {holder['host']} "
      f"(started {holder['started']}: {holder['command']}); wait for it to end or pass "
      "another --workdir")
  assert holder["command"] == (f"python -m ditm_jax.main --config={e2e.ROOT / TINY} "
                               f"--workdir={finished} --mode=train")

  assert first.returncode == 0, err[-3000:]
  assert "Traceback" not in err
  set_aside = finished / "set_aside"
  warnings = [l for l in err.splitlines() if l.strip()]  # nothing else (no Orbax log lines)
  assert len(warnings) == 2, err[-3000:]
  assert warnings[0].startswith(f"warning: checkpoint {finished}/checkpoints/40 is damaged (")
  assert warnings[0].endswith(f"; moved to {set_aside}/checkpoints/40; using step 20")
  assert warnings[1] == (f"warning: checkpoint {finished}/best/40 is newer than the resumed "
                         f"step 20; moved to {set_aside}/best/40")
  assert "Resuming from checkpoint at step 20" in out
  assert {f"checkpoints/{k}": v for k, v in files(set_aside / "checkpoints").items()} == damaged
  steps = [r["step"] for r in e2e.metrics(finished)]
  assert steps == [r["step"] for r in e2e.metrics(tiny_demo[0])] == [10, 20, 20, 30, 40, 40]
  assert e2e.train_losses(finished) == pytest.approx(e2e.train_losses(tiny_demo[0]), rel=1e-6)
  assert sorted(os.listdir(finished / "checkpoints")) == ["20", "40"]
  assert os.listdir(finished / "best") == ["40"]
  assert not lock.exists()


KILL_IN_SAVE = """
import os, runpy, signal
from orbax.checkpoint._src.path import atomicity

commit = atomicity.AtomicRenameTemporaryPath.finalize

async def killed_before_commit(self):
  final = self.get_final()
  if final.parent.name == "checkpoints" and final.name == os.environ["KILL_AT_CHECKPOINT"]:
    os.kill(os.getpid(), signal.SIGKILL)  # every file written, the rename not done
  await commit(self)

atomicity.AtomicRenameTemporaryPath.finalize = killed_before_commit
runpy.run_module("ditm_jax.main", run_name="__main__", alter_sys=True)
"""


def test_warmup_note_and_a_kill_in_the_middle_of_a_save(tmp_path):
  """A warm-up longer than the run is clamped with a note. The run is killed while saving its
  last checkpoint (keeping 1): the rerun takes over its stale lock, drops the torn line it
  left in metrics.jsonl, resumes from the checkpoint before and logs the same losses."""
  workdir = tmp_path / "run"
  args = ["--config.total_steps=10", "--config.optim.warmup_steps=50",
          "--config.checkpoint_every_steps=5", "--config.log_every_steps=5",
          "--config.keep_checkpoints=1"]
  killed = subprocess.run([sys.executable, "-c", KILL_IN_SAVE] + e2e.command(
      TINY, workdir, *args)[3:], cwd=e2e.ROOT, env=e2e.env(KILL_AT_CHECKPOINT="10"),
                          capture_output=True, text=True, timeout=300)
  assert killed.returncode == -9, killed.stderr[-3000:]
  note = ("note: config.optim.warmup_steps=50 does not fit in total_steps=10: the learning rate "
          "warms up over 9 steps instead, then decays (pass --config.optim.warmup_steps=N "
          "with N < 10 to choose)")
  assert note in killed.stdout.splitlines()
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10.orbax-checkpoint-tmp", "5"]
  logged = e2e.metrics(workdir)
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 10, "train/lo')  # as a kill in the middle of a write leaves it
  holder = json.loads((workdir / "run.lock").read_text())

  proc = e2e.run(TINY, workdir, *args)
  best = (f"warning: checkpoint {workdir}/best/10 is newer than the resumed step 5; moved to "
          f"{workdir}/set_aside/best/10")  # where the kill left the best save committed
  assert set(proc.stderr.splitlines()) <= {best}, proc.stderr[-3000:]
  assert proc.stdout.splitlines()[:3] == [
      note,
      f"note: took over the lock of {workdir} left by process {holder['pid']} on host "
      f"{holder['host']} (started {holder['started']}: {holder['command']}), which is no "
      "longer running",
      "Resuming from checkpoint at step 5"]
  assert os.listdir(workdir / "checkpoints") == ["10"]  # the crashed save cleaned up
  assert not (workdir / "run.lock").exists()
  rows = e2e.metrics(workdir)
  assert [r["step"] for r in rows] == [r["step"] for r in logged] == [5, 10, 10]
  speed = ("train/steps_per_s", "train/pairs_per_s")
  for row, before in zip(rows, logged):  # the numbers the killed run logged before its save
    assert sorted(row) == sorted(before)
    assert {k: v for k, v in row.items() if k not in speed} == pytest.approx(
        {k: v for k, v in before.items() if k not in speed}, rel=1e-6)


def test_the_loss_functions_under_x64():
  code = ("import numpy as np; from ditm_jax import losses; "
          "S = np.array([[0.6, 0.5, 0.1], [0.7, 0.4, 0.2], [0.1, 0.2, 0.9]]); "
          "P = losses.positive_mask(np.array([0, 1, 0]), 1); d = np.array([0.2, 0.6, 0.9]); "
          "r, r_prime = losses.relaxation(S, P, d, 0.5, 0.1); "
          "print(losses.ordering_loss(S, P, d, 0.2, 0.05).dtype, "
          "losses.triplet_loss(S, P, r, r_prime, 0.2, True).dtype, "
          "losses.infonce_loss(S, P, r, r_prime, 0.05).dtype)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=e2e.ROOT,
                        env=e2e.env(JAX_ENABLE_X64="1"), capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["float64"] * 3
