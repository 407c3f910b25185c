"""Embedding exports: float32 `.npy` files with a JSON sidecar, written and read back.

For split `S`, `DIR/export/` holds:
- `S_images.npy` (N, D) float32 and `S_captions.npy` (N * C, D) float32, L2-normalised;
- `S_image_ids.npy` (N,) int64 and `S_caption_image_ids.npy` (N * C,) int64, the image
  id of every caption row (captions are image-major: row `C*i .. C*i + C-1` is image i);
- `S_captions.txt`, one caption per line, in row order;
- `S_export.json`, written last: checkpoint step, config hash, text preprocessing,
  shapes and the full config. An export without its sidecar is incomplete.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow as tf

SIDECAR = "{}_export.json"


def config_hash(config):
  """Stable 16-hex-digit SHA-256 of a config's JSON (keys sorted); equal configs, equal hash."""
  text = config.to_json(sort_keys=True) if hasattr(config, "to_json") else json.dumps(
      config, sort_keys=True)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Export:
  """One split's exported embeddings, as read back by `load`."""
  split: str
  images: np.ndarray  # (N, D) float32
  captions: np.ndarray  # (N * C, D) float32
  image_ids: np.ndarray  # (N,) int64
  caption_image_ids: np.ndarray  # (N * C,) int64
  texts: list  # N * C caption strings
  meta: dict  # the sidecar


def write(out_dir, split, images, captions, image_ids, texts, captions_per_image, meta):
  """Writes one split's export (see the module docstring); returns the sidecar path."""
  images, captions = np.asarray(images, np.float32), np.asarray(captions, np.float32)
  image_ids = np.asarray(image_ids, np.int64)
  if captions.shape[0] != images.shape[0] * captions_per_image or len(texts) != len(captions):
    raise ValueError(f"export of {split!r}: {images.shape[0]} images x {captions_per_image} "
                     f"captions, but {captions.shape[0]} caption embeddings and {len(texts)} "
                     "caption texts")
  tf.io.gfile.makedirs(out_dir)
  arrays = {
      "images": images,
      "captions": captions,
      "image_ids": image_ids,
      "caption_image_ids": np.repeat(image_ids, captions_per_image),
  }
  for name, arr in arrays.items():
    with tf.io.gfile.GFile(os.path.join(out_dir, f"{split}_{name}.npy"), "wb") as f:
      np.save(f, arr)
  with tf.io.gfile.GFile(os.path.join(out_dir, f"{split}_captions.txt"), "w") as f:
    f.write("".join(" ".join(t.split()) + "\n" for t in texts))
  sidecar = {"split": split, "embed_dim": int(images.shape[1]),
             "num_images": int(images.shape[0]), "num_captions": int(captions.shape[0]),
             "captions_per_image": int(captions_per_image), **meta}
  path = os.path.join(out_dir, SIDECAR.format(split))
  with tf.io.gfile.GFile(path, "w") as f:
    json.dump(sidecar, f, indent=1)
  return path


def splits(out_dir):
  """Names of the splits with a complete export (a sidecar) in `out_dir`, sorted."""
  if not tf.io.gfile.isdir(out_dir):
    return []
  suffix = SIDECAR.format("")
  return sorted(n[:-len(suffix)] for n in tf.io.gfile.listdir(out_dir) if n.endswith(suffix))


def load(out_dir, split):
  """Reads one split's export back; a missing or inconsistent file is a ValueError."""
  path = lambda name: os.path.join(out_dir, f"{split}_{name}")
  if not tf.io.gfile.exists(path("export.json")):
    raise ValueError(f"{path('export.json')} does not exist; the export of {split!r} is "
                     "missing or incomplete")
  with tf.io.gfile.GFile(path("export.json")) as f:
    meta = json.load(f)
  arrays = {}
  for name in ("images", "captions", "image_ids", "caption_image_ids"):
    with tf.io.gfile.GFile(path(f"{name}.npy"), "rb") as f:
      arrays[name] = np.load(f)
  with tf.io.gfile.GFile(path("captions.txt")) as f:
    texts = f.read().splitlines()
  n_img, n_cap = arrays["images"].shape[0], arrays["captions"].shape[0]
  if n_img != meta["num_images"] or n_cap != meta["num_captions"] or len(texts) != n_cap:
    raise ValueError(f"the export of {split!r} in {out_dir} is inconsistent with its sidecar; "
                     "write it again with --mode=export")
  return Export(split=split, texts=texts, meta=meta, **arrays)
