"""The demo trained with the BERT text tower through `python -m ditm_jax.main`: a run killed
after its first checkpoint resumes to the losses and metrics of an uninterrupted run."""
import signal
import subprocess
import time

import numpy as np
import pytest

from tests import e2e_util as e2e

TINY = "configs/demo.py:tiny"
BERT = ("--config.model.text=bert", "--config.model.bert_path=tests/golden/bert_tiny",
        "--config.data.max_tokens=16", "--config.data.num_train=64", "--config.data.num_test=20",
        "--config.batch_size=16", "--config.total_steps=6", "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=3", "--config.eval_every_steps=6")


def test_bert_demo_resumes_to_the_same_result(tmp_path):
  # The three runs share compiled programs through JAX's persistent cache, compiled with
  # fewer LLVM passes (half the CPU time; the same programs for all three runs).
  cache = dict(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               XLA_FLAGS="--xla_force_host_platform_device_count=1 "
                         "--xla_backend_optimization_level=0")
  reference = tmp_path / "reference"
  out = e2e.run(TINY, reference, *BERT, **cache)
  assert "Imported" in out.stderr and "bert_tiny" in out.stderr  # pretrained weights loaded
  want = e2e.train_losses(reference)
  assert sorted(want) == [1, 2, 3, 4, 5, 6] and all(np.isfinite(list(want.values())))

  workdir = tmp_path / "killed"
  log = tmp_path / "killed.log"
  with open(log, "w") as f:
    proc = subprocess.Popen(e2e.command(TINY, workdir, *BERT), cwd=e2e.ROOT,
                            env=e2e.env(**cache), stdout=f, stderr=subprocess.STDOUT)
  first, last = workdir / "checkpoints" / "3", workdir / "checkpoints" / "6"
  deadline = time.time() + 240
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert first.exists(), f"no first checkpoint; the run said:\n{log.read_text()[-3000:]}"
  if last.exists():
    pytest.skip("the run finished before it could be killed")
  out = e2e.run(TINY, workdir, *BERT, **cache)
  assert "Resuming from checkpoint at step 3" in out.stdout
  assert e2e.train_losses(workdir) == pytest.approx(want, rel=1e-6)
  final = lambda w: [r for r in e2e.metrics(w) if "demo_test/rsum" in r][-1]
  assert final(workdir) == pytest.approx(final(reference), rel=1e-6)
