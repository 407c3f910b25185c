"""ditm_jax.workdir: the lock, the run's identity and the walk back over damaged checkpoints;
and a metrics.jsonl torn by a kill (metrics.MetricsWriter). In process, no training (the
same behaviour through `python -m ditm_jax.main`: test_misuse.py)."""
import json
import os
import socket
import subprocess

import ml_collections
import pytest

from configs import demo
from ditm_jax import metrics
from ditm_jax import workdir as wd

# ---------------------------------------------------------------- lock


def _lock(path):
  return json.loads((path / wd.LOCK).read_text())


def _dead_pid():
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


def test_lock_records_this_process_refuses_a_second_and_is_released(tmp_path):
  with wd.locked(str(tmp_path)):
    holder = _lock(tmp_path)
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(wd.WorkdirError, match=rf"workdir {tmp_path} is in use by process "
                                              rf"{os.getpid()} on host {holder['host']} "
                                              r"\(started .*\); wait for it to end or pass "
                                              "another --workdir"):
      wd.acquire(str(tmp_path))
    assert _lock(tmp_path) == holder  # the refused run left it alone
  assert not (tmp_path / wd.LOCK).exists()
  assert os.listdir(tmp_path) == []  # no temporary file left either


def test_lock_is_released_when_the_run_fails(tmp_path):
  with pytest.raises(RuntimeError):
    with wd.locked(str(tmp_path)):
      raise RuntimeError("the run failed")
  assert not (tmp_path / wd.LOCK).exists()


@pytest.mark.parametrize("stale", [
    lambda: dict(pid=_dead_pid(), start_ticks=None),  # the process is gone
    lambda: dict(pid=os.getpid(), start_ticks=1),  # its pid now belongs to another process
])
def test_a_stale_lock_of_this_host_is_taken_over_with_a_note(tmp_path, stale):
  old = dict(host=socket.gethostname(), started="2026-01-01T00:00:00", command="x", **stale())
  (tmp_path / wd.LOCK).write_text(json.dumps(old))
  notes = wd.acquire(str(tmp_path))
  assert notes == [f"took over the lock of {tmp_path} left by process {old['pid']} on host "
                   f"{old['host']} (started 2026-01-01T00:00:00: x), which is no longer running"]
  assert _lock(tmp_path)["pid"] == os.getpid()
  wd.release(str(tmp_path))


def test_a_lock_of_another_host_or_unreadable_is_refused(tmp_path):
  lock = tmp_path / wd.LOCK
  lock.write_text(json.dumps(dict(host="elsewhere", pid=_dead_pid(), started="s", command="c")))
  with pytest.raises(wd.WorkdirError, match=rf"locked by process \d+ on host elsewhere .*this "
                                            r"host cannot tell whether that run goes on. If "
                                            rf"you are sure it has ended, remove {lock} and"):
    wd.acquire(str(tmp_path))
  lock.write_text('{"host": ')
  with pytest.raises(wd.WorkdirError, match=f"has a lock file {lock} that cannot be read"):
    wd.acquire(str(tmp_path))
  wd.release(str(tmp_path))  # not ours: left as it is
  assert lock.read_text() == '{"host": '


def test_other_processes_stop_when_process_0_cannot_lock(tmp_path):
  with pytest.raises(wd.WorkdirError, match="process 0 could not lock"):
    with wd.locked(str(tmp_path), is_main=False, agree=lambda ok: False):
      pass
  with wd.locked(str(tmp_path), is_main=False):  # process 1: no lock file of its own
    assert not (tmp_path / wd.LOCK).exists()

# ---------------------------------------------------------------- identity


def _run_in(path, config):
  """A workdir as training leaves it: config.json and a checkpoint."""
  (path / "checkpoints" / "20").mkdir(parents=True)
  (path / "config.json").write_text(config.to_json(indent=1))
  return str(path)


def test_other_settings_are_refused_and_list_the_fields(tmp_path):
  workdir = _run_in(tmp_path, demo.get_config("tiny"))
  config = demo.get_config("tiny")
  config.model.embed_dim = 32
  config.loss.matching = "triplet"
  config.total_steps = 60  # may change: not listed among the differences
  with pytest.raises(wd.WorkdirError) as e:
    wd.check_identity(config, workdir)
  assert str(e.value) == (
      f"workdir {workdir} holds a run with other settings: loss.matching=\"infonce\" there, "
      f"\"triplet\" now; model.embed_dim=64 there, 32 now. To resume it, rerun with its "
      f"settings ({workdir}/config.json); to start this run, pass a new --workdir")


def test_resumable_settings_are_a_note_and_derived_ones_are_not_compared(tmp_path):
  recorded = demo.get_config("tiny")
  recorded.model.region_capacity = 0.8123  # as data/packing_stats.py derives it
  workdir = _run_in(tmp_path, recorded)
  config = demo.get_config("tiny")
  assert wd.check_identity(config, workdir) == []
  config.total_steps, config.eval_every_steps, config.mesh.data = 60, 10, 2
  config.evals.demo_test.every_steps = 5
  assert wd.check_identity(config, workdir) == [
      "changed since the run in this workdir, allowed on resume: eval_every_steps=10 (was "
      "20); evals.demo_test.every_steps=5 (was (absent)); mesh.data=2 (was -1); "
      "total_steps=60 (was 40)"]


def test_fields_added_to_the_base_after_a_run_are_a_note(tmp_path):
  recorded = demo.get_config("tiny")
  del recorded.loss["relax_budget"]  # a run made before the field existed
  workdir = _run_in(tmp_path, recorded)
  assert wd.check_identity(demo.get_config("tiny"), workdir) == [
      "changed since the run in this workdir, allowed on resume: loss.relax_budget=0.2 (was "
      "(absent))"]
  changed = demo.get_config("tiny")
  changed.loss.relax_beta = 0.1  # a field the run has: still refused
  with pytest.raises(wd.WorkdirError, match="loss.relax_beta=0.5 there, 0.1 now"):
    wd.check_identity(changed, workdir)


def test_identity_needs_a_run_in_the_workdir(tmp_path):
  (tmp_path / "config.json").write_text(demo.get_config().to_json())  # no checkpoint yet
  assert wd.check_identity(demo.get_config("tiny"), str(tmp_path)) == []
  (tmp_path / "checkpoints" / "20.orbax-checkpoint-tmp").mkdir(parents=True)  # a crashed save
  assert wd.check_identity(demo.get_config("tiny"), str(tmp_path)) == []
  (tmp_path / "checkpoints" / "20").mkdir()
  with pytest.raises(wd.WorkdirError, match="other settings"):
    wd.check_identity(demo.get_config("tiny"), str(tmp_path))
  (tmp_path / "config.json").write_text("{")
  with pytest.raises(wd.WorkdirError, match="config.json .* cannot be read"):
    wd.check_identity(demo.get_config("tiny"), str(tmp_path))


def test_flat_fields_of_a_config():
  config = ml_collections.ConfigDict(dict(a=1, b=dict(c=(1, 2), d=dict(e=None)), f={}))
  assert wd.flat(config) == {"a": 1, "b.c": [1, 2], "b.d.e": None, "f": {}}

# ---------------------------------------------------------------- damaged checkpoints


def test_walks_back_to_the_newest_checkpoint_that_loads():
  def load(step):
    if step > 20:
      raise UnicodeDecodeError("utf-8", b"\xc4", 0, 1, "invalid start byte")
    return f"state {step}"
  step, state, damaged = wd.newest_intact([20, 40, 10, 30], load)
  assert (step, state) == (20, "state 20")
  assert damaged == [
      (40, "damaged (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xc4 in position 0: "
           "invalid start byte)"),
      (30, damaged[0][1])]
  assert wd.newest_intact([], load) == (None, None, [])
  assert wd.newest_intact([30], load)[:2] == (None, None)


def test_set_aside_moves_never_deletes_and_needs_an_intact_one(tmp_path, capsys):
  root = tmp_path / "checkpoints"
  for step in (20, 40):
    (root / str(step)).mkdir(parents=True)
    (root / str(step) / "file").write_text(str(step))
  problems = [(40, "damaged (OSError: x)")]
  with pytest.raises(wd.WorkdirError, match=rf"no intact checkpoint in {root}: step 40 is "
                                            r"damaged \(OSError: x\). Nothing was changed"):
    wd.set_aside(str(root), problems, None, move=True)
  assert sorted(os.listdir(root)) == ["20", "40"]
  wd.set_aside(str(root), problems, 20, move=False)  # eval, export: reported only
  assert capsys.readouterr().err == (f"warning: checkpoint {root}/40 is damaged (OSError: x); "
                                     "using step 20\n")
  barrier = []
  wd.set_aside(str(root), problems, 20, move=True, barrier=barrier.append)
  moved = tmp_path / "set_aside" / "checkpoints" / "40"
  assert capsys.readouterr().err == (f"warning: checkpoint {root}/40 is damaged (OSError: x); "
                                     f"moved to {moved}; using step 20\n")
  assert os.listdir(root) == ["20"] and (moved / "file").read_text() == "40"
  assert barrier == [True]
  (root / "40").mkdir()  # damaged again: kept beside the first
  wd.set_aside(str(root), problems, 20, move=True, is_main=True)
  assert sorted(os.listdir(moved.parent)) == ["40", "40.1"]

# ---------------------------------------------------------------- metrics.jsonl


def test_a_torn_last_metrics_line_is_dropped_and_the_file_continued(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path))
  for step in (10, 20, 30):
    writer.write(step, {"train/loss": 1.0})
  path = tmp_path / "metrics.jsonl"
  with open(path, "a") as f:
    f.write('{"step": 40, "train/lo')  # killed while writing
  writer.truncate_after(20)
  writer.write(30, {"train/loss": 2.0})
  assert [json.loads(l) for l in path.read_text().splitlines()] == [
      {"step": 10, "train/loss": 1.0}, {"step": 20, "train/loss": 1.0},
      {"step": 30, "train/loss": 2.0}]
  path.write_text('{"step": 10}\nnot json\n{"step": 20}\n')
  with pytest.raises(ValueError, match=f"{path}: line 2 is not JSON; fix or remove that line"):
    writer.truncate_after(20)
