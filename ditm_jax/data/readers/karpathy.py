"""Reader of Karpathy's split JSON plus the image files it names (pixels), for `prepare`.

`config.data.karpathy_json` lists the images with their sentences and Karpathy split; the files
are under `config.data.image_dir` (default: raw_dir) and are stored encoded, as they are.
`config.data.karpathy_splits` maps each of our splits to Karpathy splits ('train,restval').
"""
import json
import os

import numpy as np

from ditm_jax.data.readers import source


def split_mapping(config, names, what):
  """Karpathy split name -> our split name, from `config.data.karpathy_splits`."""
  spec = config.data.karpathy_splits
  missing = [n for n in names if n not in spec]
  if missing:
    raise ValueError(f"config.data.karpathy_splits has no entry for split(s) {missing} of "
                     f"config.data.splits; map each to {what} splits, e.g. "
                     "--config.data.karpathy_splits.dev=val")
  return {k.strip(): n for n in names for k in spec[n].split(",") if k.strip()}


def read(config, names):
  """{split: SplitSource} of every split in `names`, each checked before any is written."""
  d = config.data
  path = os.path.join(d.raw_dir, d.karpathy_json)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing; put Karpathy's {d.karpathy_json} in "
                            "config.data.raw_dir or set --config.data.karpathy_json")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not readable JSON ({e}); download Karpathy's split file "
                     "again") from None
  images = data.get("images") if isinstance(data, dict) else None
  if not isinstance(images, list):
    raise ValueError(f"{path} has no 'images' list; it is not a Karpathy split file")
  mapping = split_mapping(config, names, "Karpathy ('train', 'restval', 'val', 'test')")
  image_dir = d.image_dir or d.raw_dir
  per_split = {n: ([], [], []) for n in names}  # captions, ids, files
  missing = []
  for k, img in enumerate(images):
    split = mapping.get(img.get("split"))
    if split is None:
      continue
    name = img.get("filename", f"images[{k}]")
    sentences = [str(s.get("raw", "")).strip() for s in img.get("sentences", [])]
    if len(sentences) < source.CAPTIONS_PER_IMAGE:
      raise ValueError(f"{path}: image {name} has {len(sentences)} sentences, fewer than the "
                       f"{source.CAPTIONS_PER_IMAGE} per image of the protocol; fix the file")
    if not all(sentences[:source.CAPTIONS_PER_IMAGE]):
      raise ValueError(f"{path}: image {name} has an empty sentence among its first five; "
                       "fix the file")
    image_id = img.get("cocoid", img.get("imgid"))
    if image_id is None:
      raise ValueError(f"{path}: image {name} has neither 'cocoid' nor 'imgid'")
    file = os.path.join(image_dir, img.get("filepath", ""), name)
    if not os.path.isfile(file):
      missing.append(file)
    caps, ids, files = per_split[split]
    caps.extend(sentences[:source.CAPTIONS_PER_IMAGE])
    ids.append(int(image_id))
    files.append(file)
  if missing:
    raise FileNotFoundError(f"{len(missing)} image file(s) named in {path} are missing, e.g. "
                            f"{missing[0]}; pass --config.data.image_dir=<directory holding "
                            "the images (with their 'filepath' subdirectories)>")
  empty = [n for n in names if not per_split[n][1]]
  if empty:
    raise ValueError(f"{path} has no images for split(s) {empty} under "
                     f"config.data.karpathy_splits; check the mapping")
  return {n: source.SplitSource(name=n, captions=caps, image_ids=np.array(ids, np.int64),
                                layout=f"Karpathy {d.karpathy_splits[n]!s}, encoded image files",
                                chunks=lambda files=files: _file_chunks(files))
          for n, (caps, ids, files) in per_split.items()}


def _file_chunks(files):
  for start in range(0, len(files), source.JPEG_CHUNK):
    chunk = []
    for file in files[start:start + source.JPEG_CHUNK]:
      with open(file, "rb") as f:
        data = f.read()
      if data[:2] != b"\xff\xd8":
        raise ValueError(f"{file} is not a JPEG file; convert it to JPEG")
      chunk.append(data)
    yield start, chunk
