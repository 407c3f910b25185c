"""Bad input through `python -m ditm_jax.main`: exit 1, one message naming the file, and
nothing half-written. The commands run concurrently (each is a few seconds of imports)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ditm_jax.data import prepare
from tests import conftest
from tests import e2e_util as e2e
from tests import real_data_util as rd

R, F = 6, 8


def _lines(path, edit):
  lines = path.read_text().split("\n")[:-1]
  path.write_text("\n".join(edit(lines)) + "\n")


def _features(path, edit):
  x = np.load(path)
  edit(x)
  np.save(path, x)


def _set(lines, i, value):
  lines[i] = value
  return lines


# name -> (config arg, change to the raw directory, extra flags, text the message must hold)
PREPARE_CASES = {
    "captions_not_five_per_image": (
        "tiny", lambda raw: _lines(raw / "train_caps.txt", lambda l: l[:-1]), [],
        "train_caps.txt has 49 caption lines but"),
    "empty_caption": (
        "tiny", lambda raw: _lines(raw / "dev_caps.txt", lambda l: _set(l, 2, "")), [],
        "dev_caps.txt line 3 is empty"),
    "whitespace_caption": (
        "tiny", lambda raw: _lines(raw / "testall_caps.txt", lambda l: _set(l, 6, " \t ")), [],
        "testall_caps.txt line 7 is empty or whitespace-only"),
    "nan_features": (
        "tiny", lambda raw: _features(raw / "train_ims.npy",
                                      lambda x: x.__setitem__((3, 1, 2), np.nan)), [],
        "train_ims.npy row 3 (image 3) has NaN or inf"),
    "inf_features": (
        "tiny", lambda raw: _features(raw / "train_ims.npy",
                                      lambda x: x.__setitem__((7, 0, 0), -np.inf)), [],
        "train_ims.npy row 7 (image 7) has NaN or inf"),
    "wrong_feature_width": (
        "tiny", lambda raw: None, ["--config.data.feature_dim=2048"],
        "train_ims.npy has feature width 8 but config.data.feature_dim=2048"),
    "missing_features": (
        "tiny", lambda raw: os.remove(raw / "testall_ims.npy"), [],
        "testall_ims.npy is missing"),
    "missing_captions": (
        "tiny", lambda raw: os.remove(raw / "dev_caps.txt"), [], "dev_caps.txt is missing"),
    "ids_miscounted": (
        "tiny", lambda raw: _lines(raw / "train_ids.txt", lambda l: l[:-3]), [],
        "train_ids.txt has 47 ids"),
    "unreadable_json": (
        "img=pixels,tiny", lambda raw: (raw / "dataset_coco.json").write_text('{"images": [}'),
        ["--config.data.format=karpathy"], "dataset_coco.json is not readable JSON"),
    "karpathy_four_sentences": (
        "img=pixels,tiny", lambda raw: _karpathy(raw, drop_sentence=True),
        ["--config.data.format=karpathy"], "COCO_val2014_000000000001.jpg has 4 sentences"),
    "karpathy_missing_image": (
        "img=pixels,tiny", lambda raw: _karpathy(raw, drop_file=True),
        ["--config.data.format=karpathy"], "COCO_val2014_000000000002.jpg"),
    "tfds_without_coco_captions": (
        "img=pixels,tiny", lambda raw: None, ["--config.data.format=tfds"],
        "holds no TFDS coco_captions data set"),
}


def _karpathy(raw, drop_sentence=False, drop_file=False):
  caps, _ = rd.shared_captions(conftest.SHARED_DATA, "coco", "testall")
  rd.write_karpathy(raw, caps[:30], ["train", "train", "train", "restval", "val", "test"],
                    image_size=8)
  if drop_sentence:
    data = json.loads((raw / "dataset_coco.json").read_text())
    data["images"][1]["sentences"].pop()
    (raw / "dataset_coco.json").write_text(json.dumps(data))
  if drop_file:
    os.remove(raw / "val2014" / "COCO_val2014_000000000002.jpg")


def _raw(path):
  caps, ids = rd.shared_captions(conftest.SHARED_DATA, "coco", "testall")
  splits = {"train": (caps[:50], ids[:50]), "dev": (caps[50:75], ids[50:75]),
            "testall": (caps[75:100], ids[75:100])}
  return rd.write_precomp(path, splits, num_regions=R, feature_dim=F)


def _command(arg, raw, out, extra, mode="prepare", workdir=None):
  cmd = [sys.executable, "-m", "ditm_jax.main", f"--config={e2e.ROOT}/configs/coco.py:{arg}",
         f"--mode={mode}", f"--config.data.raw_dir={raw}", f"--config.data.dir={out}",
         f"--config.data.num_regions={R}", f"--config.data.feature_dim={F}", *extra]
  return cmd + ([f"--workdir={workdir}"] if workdir else [])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """Runs every bad-input command at once; name -> (CompletedProcess-like, out dir)."""
  if not conftest.SHARED_DATA.is_dir():
    pytest.skip(f"{conftest.SHARED_DATA} not present (real annotation files live beside the "
                "checkout)")
  tmp = tmp_path_factory.mktemp("errors")
  jobs = {}
  for name, (arg, change, extra, _) in PREPARE_CASES.items():
    raw = tmp / name / "raw"
    if "karpathy" not in name and "json" not in name and "tfds" not in name:
      _raw(raw)
    else:
      raw.mkdir(parents=True)
    change(raw)
    jobs[name] = (_command(arg, raw, tmp / name / "out", extra), tmp / name / "out")
  # Training on prepared data that is absent, or made with other settings.
  good = tmp / "good"
  config = rd.config("coco", "tiny", raw_dir=str(_raw(good / "raw")), dir=str(good / "out"),
                     num_regions=R, feature_dim=F)
  prepare.prepare(config)
  jobs["train_without_manifest"] = (
      _command("tiny", good / "raw", good / "raw", [], "train", tmp / "w1"), None)
  jobs["train_on_other_settings"] = (
      _command("tiny", good / "raw", good / "out", ["--config.data.max_tokens=20"], "train",
               tmp / "w2"), None)
  jobs["prepare_into_prepared_dir"] = (_command("tiny", good / "raw", good / "out", []), None)
  procs = {name: subprocess.Popen(cmd, cwd=e2e.ROOT, env=e2e.env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
           for name, (cmd, _) in jobs.items()}
  out = {}
  for name, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=300)
    out[name] = (proc.returncode, stdout, stderr, jobs[name][1])
  return out


def _check(result, expected):
  code, stdout, stderr, out = result
  assert code == 1, (stdout[-2000:], stderr[-2000:])
  assert "Traceback" not in stderr, stderr[-3000:]
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert lines[-1].startswith("error: ") and expected in lines[-1], stderr[-2000:]
  if out is not None:  # nothing half-written
    assert not os.path.exists(out) and not os.path.exists(str(out) + ".incomplete")


@pytest.mark.parametrize("name", sorted(PREPARE_CASES))
def test_bad_raw_input_is_one_clear_error(results, name):
  _check(results[name], PREPARE_CASES[name][3])


def test_training_without_a_manifest(results):
  _check(results["train_without_manifest"], "raw/manifest.json does not exist")
  assert "--mode=prepare" in results["train_without_manifest"][2]


def test_training_on_data_prepared_with_other_settings(results):
  _check(results["train_on_other_settings"],
         "out/manifest.json does not match the config (max_tokens: prepared 32, config 20)")


def test_prepare_never_overwrites(results):
  _check(results["prepare_into_prepared_dir"], "out already holds prepared data")
