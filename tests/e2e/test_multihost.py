"""Several processes and preemption, end to end through `python -m ditm_jax.main`.

- Two processes x 4 CPU devices (gloo collectives, coordinator on localhost) train the tiny
  demo in one workdir. SIGTERM to one of them stops both at the same step with one checkpoint
  and exit 143; the same command resumes, and the run logs the losses of one uninterrupted
  process x 8 devices. (Exact resumption in one process: test_train_e2e.py, after a SIGKILL.)
"""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import e2e_util as e2e

TINY = "configs/demo.py:tiny"
def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _final_eval(workdir):
  return [r for r in e2e.metrics(workdir) if "demo_test/rsum" in r][-1]


@pytest.fixture(scope="module")
def reference(tiny_demo_8dev):
  """One process, 8 devices, uninterrupted."""
  return tiny_demo_8dev


def _start_processes(workdir, count=2, devices=4):
  port = _free_port()
  procs = []
  for i in range(count):
    env = e2e.env(devices, DITM_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               DITM_NUM_PROCESSES=str(count), DITM_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(e2e.command(TINY, workdir), cwd=e2e.ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def _finish(procs, timeout=600):
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outs.append((p.returncode, out, err))
  return outs


def _wait_for_line(proc, text, timeout=600):
  deadline = time.time() + timeout
  lines = []
  while time.time() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    lines.append(line)
    if text in line:
      return lines
  raise AssertionError(f"no {text!r} in the output:\n{''.join(lines)[-3000:]}")


def _stopped_step(err):
  message = [l for l in err.splitlines() if "stopped by SIGTERM after step" in l]
  assert len(message) == 1, err[-3000:]
  return int(message[0].split("after step ")[1].split(";")[0])


def test_two_processes_stop_together_resume_and_log_the_losses_of_one(tmp_path, reference):
  """SIGTERM to process 1 only: both save one checkpoint at the same step and exit 143; the
  same command resumes both, and the run ends as one uninterrupted process x 8 devices."""
  workdir = tmp_path / "two_processes"
  procs = _start_processes(workdir)
  try:
    _wait_for_line(procs[0], "step     10/40")
    procs[1].send_signal(signal.SIGTERM)  # only process 1 is told
    outs = _finish(procs, timeout=300)
  finally:
    for p in procs:
      p.kill()
  for i, (code, _, err) in enumerate(outs):
    assert code == 143, f"process {i} exited {code}\n{err[-3000:]}"
  steps = {_stopped_step(err) for _, _, err in outs}
  assert len(steps) == 1, steps  # the same step on both
  stopped = steps.pop()
  assert 10 <= stopped < 40
  assert (workdir / "checkpoints" / str(stopped)).is_dir()
  assert max(e2e.train_losses(workdir)) <= stopped  # no final evaluation or export ran
  assert not (workdir / "export").exists()

  outs = _finish(_start_processes(workdir))
  for i, (code, out, err) in enumerate(outs):
    assert code == 0, f"process {i} exited {code}\n{out[-2000:]}\n{err[-3000:]}"
  assert f"Resuming from checkpoint at step {stopped}" in outs[0][1]
  one, two = e2e.train_losses(reference), e2e.train_losses(workdir)
  assert sorted(two) == sorted(one) == [10, 20, 30, 40]
  for step in one:
    assert abs(two[step] - one[step]) <= 1e-4 * abs(one[step]), (step, one[step], two[step])
  steps = [r["step"] for r in e2e.metrics(workdir)]
  assert len(steps) == len(e2e.metrics(reference)), "process 1 wrote metrics too"
  final, expected = _final_eval(workdir), _final_eval(reference)
  assert final["step"] == 40
  assert final["demo_test/rsum"] == pytest.approx(expected["demo_test/rsum"], abs=2.0)
  assert "| demo_test |" in outs[0][1] and "| demo_test |" not in outs[1][1]
  assert "step     40/40" in outs[0][1] and "step " not in outs[1][1]
  exported = np.load(workdir / "export" / "test_images.npy")
  np.testing.assert_allclose(exported, np.load(reference / "export" / "test_images.npy"),
                             atol=2e-3)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "40"]


@pytest.mark.parametrize("env, expected", [
    ({"DITM_DISTRIBUTED": "yes"}, "DITM_DISTRIBUTED='yes'"),
    ({"DITM_COORDINATOR_ADDRESS": "127.0.0.1:1"}, "DITM_NUM_PROCESSES, DITM_PROCESS_ID"),
])
def test_bad_distributed_environment_is_one_message(tmp_path, env, expected):
  proc = subprocess.run(e2e.command(TINY, tmp_path), cwd=e2e.ROOT, env=e2e.env(1, **env),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_main_initializes_nothing_without_the_environment():
  code = ("import os, sys; sys.argv = ['x']; import ditm_jax.main as m; "
          "m._maybe_initialize_distributed(); print('jax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], cwd=e2e.ROOT, env=e2e.env(1),
                       capture_output=True, text=True, timeout=120, check=True)
  assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- launch scripts
# Run with stand-ins for python, gcloud, srun and scontrol that record what they were given.

LAUNCH = e2e.ROOT / "launch"
FAKE_PYTHON = """#!/usr/bin/env bash
echo "python $* | A=${DITM_COORDINATOR_ADDRESS:-};N=${DITM_NUM_PROCESSES:-};\
I=${DITM_PROCESS_ID:-};GPU=${CUDA_VISIBLE_DEVICES:-}" >> "$LOG"
exit "${FAKE_STATUS:-0}"
"""


def _fake_bin(tmp_path, **scripts):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in scripts.items():
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  return bin_dir


def _run_script(tmp_path, script, args, bin_dir, **env):
  log = tmp_path / "log.txt"
  full = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG=str(log),
              PYTHON=str(bin_dir / "python"))
  full.update(env)
  proc = subprocess.run(["bash", str(LAUNCH / script), *args], env=full, capture_output=True,
                        text=True, timeout=60)
  return proc, (log.read_text().splitlines() if log.exists() else [])


@pytest.mark.parametrize("script", ["gpu_single_host.sh", "slurm.sbatch", "tpu_vm.sh",
                                    "demo_compare.sh"])
def test_launch_scripts_parse_and_document_their_command(script):
  subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True)
  assert "launch/" in (LAUNCH / script).read_text().split("set -euo pipefail")[0]


def test_gpu_single_host_starts_one_process_per_gpu(tmp_path):
  bin_dir = _fake_bin(tmp_path, python=FAKE_PYTHON)
  proc, log = _run_script(tmp_path, "gpu_single_host.sh",
                          ["configs/demo.py", "w", "--config.total_steps=5"], bin_dir)
  assert proc.returncode == 0, proc.stderr
  assert log == ["python -m ditm_jax.main --config=configs/demo.py --workdir=w "
                 "--config.total_steps=5 | A=;N=;I=;GPU="]
  (tmp_path / "log.txt").unlink()
  proc, log = _run_script(tmp_path, "gpu_single_host.sh", ["c.py", "w"], bin_dir, PROCS="2",
                          PORT="4321", FAKE_STATUS="143")
  assert proc.returncode == 143
  assert sorted(l.split(" | ")[1] for l in log) == ["A=127.0.0.1:4321;N=2;I=0;GPU=0",
                                                   "A=127.0.0.1:4321;N=2;I=1;GPU=1"]


def test_slurm_script_sets_the_processes_and_requeues_on_preemption(tmp_path):
  bin_dir = _fake_bin(
      tmp_path, python=FAKE_PYTHON,
      scontrol='#!/usr/bin/env bash\nif [ "$1" = show ]; then printf "gpu7\\ngpu8\\n"; '
               'else echo "scontrol $*" >> "$LOG"; fi\n',
      srun='#!/usr/bin/env bash\nshift\nSLURM_PROCID=1 "$@"\n')
  env = dict(SLURM_JOB_NODELIST="gpu[7-8]", SLURM_NTASKS="2", SLURM_JOB_ID="99")
  proc, log = _run_script(tmp_path, "slurm.sbatch", ["configs/coco.py:text=bert", "/w", "--x=a b"],
                          bin_dir, **env)
  assert proc.returncode == 0, proc.stderr
  assert log == ["python -m ditm_jax.main --config=configs/coco.py:text=bert --workdir=/w "
                 "--x=a b | A=gpu7:29500;N=2;I=1;GPU="]
  (tmp_path / "log.txt").unlink()
  proc, log = _run_script(tmp_path, "slurm.sbatch", ["c.py", "/w"], bin_dir, FAKE_STATUS="143",
                          **env)
  assert proc.returncode == 143 and log[-1] == "scontrol requeue 99"


def test_tpu_script_runs_the_command_on_every_worker(tmp_path):
  bin_dir = _fake_bin(tmp_path, gcloud='#!/usr/bin/env bash\nprintf "%s\\n" "$@" >> "$LOG"\n')
  proc, log = _run_script(tmp_path, "tpu_vm.sh", ["configs/coco.py:text=bert", "gs://b/w",
                                                  "--config.model.bert_path=a b"], bin_dir,
                          TPU="v4-32", ZONE="us-central2-b", PYTHON="python3")
  assert proc.returncode == 0, proc.stderr
  assert log[:5] == ["compute", "tpus", "tpu-vm", "ssh", "v4-32"]
  assert "--zone=us-central2-b" in log and "--worker=all" in log
  command = next(l for l in log if l.startswith("--command="))
  assert "DITM_DISTRIBUTED=auto python3 -m ditm_jax.main" in command
  assert r"--config.model.bert_path=a\ b" in command and "--workdir=gs://b/w" in command
  proc, _ = _run_script(tmp_path, "tpu_vm.sh", ["c.py", "w"], bin_dir)
  assert proc.returncode == 2 and "TPU=<name>" in proc.stderr
