"""Small raw data sets in the real layouts, with features that carry the captions' words."""

import json
import pathlib
import sys
import zlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def shared_captions(shared=SHARED, dataset="coco", split="testall"):
  """(captions, image ids per caption line) of a real precomputed-layout split."""
  shared = pathlib.Path(shared)
  caps = (shared / dataset / f"{split}_caps.txt").read_text(encoding="utf-8").split("\n")[:-1]
  ids = (shared / dataset / f"{split}_ids.txt").read_text().split()
  return caps, [int(i) for i in ids]


def word_features(captions, num_regions, feature_dim, seed=0, noise=0.3):
  """(N, R, F) float32: image i's regions are embeddings of the words of its five captions.

  Each word has a fixed random vector (from its CRC32); region r of image i is the vector of
  the image's r-th most frequent word plus noise, so a model can learn to match captions.
  """
  n = len(captions) // 5
  rng = np.random.default_rng(seed)
  out = rng.normal(0, noise, (n, num_regions, feature_dim)).astype(np.float32)
  for i in range(n):
    counts = {}
    for c in captions[5 * i:5 * i + 5]:
      for w in c.lower().split():
        if w.isalpha() and len(w) > 2:
          counts[w] = counts.get(w, 0) + 1
    words = sorted(counts, key=lambda w: (-counts[w], w))[:num_regions]
    for r, w in enumerate(words):
      out[i, r] += np.random.default_rng(zlib.crc32(w.encode())).normal(0, 1, feature_dim)
  return out


def write_precomp(raw, splits, num_regions=36, feature_dim=64, one_row_per_caption=(),
                  ids=True):
  """Writes {split}_ims.npy, {split}_caps.txt, {split}_ids.txt for {split: (captions, ids)}."""
  raw = pathlib.Path(raw)
  raw.mkdir(parents=True, exist_ok=True)
  for k, (name, (caps, cap_ids)) in enumerate(splits.items()):
    feats = word_features(caps, num_regions, feature_dim, seed=k)
    if name in one_row_per_caption:
      feats = np.repeat(feats, 5, axis=0)
    np.save(raw / f"{name}_ims.npy", feats)
    (raw / f"{name}_caps.txt").write_text("\n".join(caps) + "\n", encoding="utf-8")
    if ids:
      (raw / f"{name}_ids.txt").write_text("\n".join(map(str, cap_ids)) + "\n")
  return raw


def coco_precomp(raw, sizes=(200, 40, 60), feature_dim=64, shared=SHARED, **kwargs):
  """A COCO-like precomputed layout with train/dev/testall of `sizes` images."""
  caps, ids = shared_captions(shared, "coco", "testall")
  out, start = {}, 0
  for name, n in zip(("train", "dev", "testall"), sizes):
    out[name] = (caps[5 * start:5 * (start + n)], ids[5 * start:5 * (start + n)])
    start += n
  return write_precomp(raw, out, feature_dim=feature_dim, **kwargs)


def write_karpathy(raw, captions, splits, image_size=24, with_files=True):
  """dataset_coco.json + JPEG files under raw/val2014 for images with `captions` (5 each)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  raw = pathlib.Path(raw)
  (raw / "val2014").mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  images = []
  for i, split in enumerate(splits):
    name = f"COCO_val2014_{i:012d}.jpg"
    if with_files:
      pixels = rng.integers(0, 255, (image_size, image_size + 8, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(raw / "val2014" / name, quality=90)
    images.append({"filepath": "val2014", "filename": name, "split": split, "cocoid": 1000 + i,
                   "sentences": [{"raw": c, "tokens": c.lower().split()}
                                 for c in captions[5 * i:5 * i + 5]]})
  (raw / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
  return raw


def config(name="coco", arg="tiny", **data):
  """configs/<name>.py:<arg> with `config.data` fields overridden."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(f"_{name}_config", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(arg)
  for key, value in data.items():
    c.data[key] = value
  return c


def main():
  """python tests/real_data_util.py RAW N_TRAIN N_DEV N_TEST FEATURE_DIM"""
  raw, sizes, dim = sys.argv[1], tuple(map(int, sys.argv[2:5])), int(sys.argv[5])
  coco_precomp(raw, sizes, feature_dim=dim)


if __name__ == "__main__":
  main()
