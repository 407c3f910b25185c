"""The demo trained with the BERT text tower through `python -m ditm_jax.main`: a run stopped
after its first checkpoint resumes to the losses and metrics of an uninterrupted run."""
import json
import shutil

import numpy as np
import pytest

from tests import e2e_util as e2e

TINY = "configs/demo.py:tiny"
BERT = ("--config.model.text=bert", "--config.model.bert_path=tests/golden/bert_tiny",
        "--config.data.max_tokens=16", "--config.data.num_train=64", "--config.data.num_test=20",
        "--config.batch_size=16", "--config.total_steps=6", "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=3", "--config.eval_every_steps=6")


def test_bert_demo_resumes_to_the_same_result(tmp_path):
  reference = tmp_path / "reference"
  out = e2e.run(TINY, reference, *BERT)
  assert "Imported" in out.stderr and "bert_tiny" in out.stderr  # pretrained weights loaded
  # BERT's packing buffer is sized from the demo captions' lengths
  # (tests/unit/data/test_packing_stats.py), reported, and kept in the run's config. Here they
  # fill nearly all 16 positions: the buffer would be the whole batch, so BERT runs padded.
  derived = json.loads((reference / "config.json").read_text())["model"]["text_token_capacity"]
  assert 0.9 < derived < 1
  assert f"Packing: model.text_token_capacity = {derived:.4f} (was 0.75)" in out.stdout
  want = e2e.train_losses(reference)
  assert sorted(want) == [1, 2, 3, 4, 5, 6] and all(np.isfinite(list(want.values())))

  # The state a run stopped right after its step-3 checkpoint leaves behind (a deterministic
  # stand-in for a kill; SIGKILL is tested in test_train_e2e, SIGTERM in test_multihost).
  workdir = tmp_path / "stopped"
  shutil.copytree(reference, workdir)
  shutil.rmtree(workdir / "checkpoints" / "6")
  shutil.rmtree(workdir / "best", ignore_errors=True)
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  (workdir / "metrics.jsonl").write_text(
      "".join(l + "\n" for l in lines if json.loads(l)["step"] <= 3))
  out = e2e.run(TINY, workdir, *BERT)
  assert "Resuming from checkpoint at step 3" in out.stdout
  assert e2e.train_losses(workdir) == pytest.approx(want, rel=1e-6)
  final = lambda w: [r for r in e2e.metrics(w) if "demo_test/rsum" in r][-1]
  assert final(workdir) == pytest.approx(final(reference), rel=1e-6)
