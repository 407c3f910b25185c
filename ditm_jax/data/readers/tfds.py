"""Reader of TFDS `coco_captions` (Karpathy splits, pixels), for `prepare`.

Read from the TFDS data_dir `config.data.raw_dir`, never downloaded; read twice (captions,
then images), and the second read is checked to be in the order of the first.
"""
import os

import numpy as np

from ditm_jax.data.readers import karpathy
from ditm_jax.data.readers import source


def read(config, names):
  """{split: SplitSource} of every split in `names` (captions now, images on the second read)."""
  d = config.data
  if d.name == "f30k":
    raise ValueError("config.data.format='tfds' reads TFDS coco_captions, which is COCO only; "
                     "for Flickr30K use --config.data.format=karpathy or precomp")
  if not os.path.isdir(os.path.join(d.raw_dir, "coco_captions")):
    raise FileNotFoundError(
        f"{d.raw_dir} holds no TFDS coco_captions data set (no {d.raw_dir}/coco_captions/); "
        "point --config.data.raw_dir at the TFDS data_dir that has it, or build it there with "
        f"`tfds build coco_captions --data_dir={d.raw_dir}` (prepare never downloads)")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder("coco_captions", data_dir=d.raw_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(f"the TFDS coco_captions data set in {d.raw_dir} is incomplete; "
                            f"rebuild it with `tfds build coco_captions --data_dir={d.raw_dir}`")
  mapping = karpathy.split_mapping(config, names, "TFDS coco_captions ('train', 'restval', "
                                   "'val', 'test')")
  out = {}
  for name in names:
    expr = "+".join(k for k, n in mapping.items() if n == name)
    captions, ids = [], []
    for ex in tfds.as_numpy(_tfds_split(builder, expr, with_image=False)):
      texts = [t.decode("utf-8").strip() for t in ex["captions"]["text"]]
      if len(texts) < source.CAPTIONS_PER_IMAGE or not all(texts[:source.CAPTIONS_PER_IMAGE]):
        raise ValueError(f"TFDS coco_captions ({d.raw_dir}) image {ex['image/id']} has fewer "
                         "than five non-empty captions; rebuild the data set")
      captions.extend(texts[:source.CAPTIONS_PER_IMAGE])
      ids.append(int(ex["image/id"]))
    out[name] = source.SplitSource(
        name=name, captions=captions, image_ids=np.array(ids, np.int64),
        layout=f"TFDS coco_captions {expr}, encoded images",
        chunks=lambda expr=expr, ids=ids: _tfds_chunks(builder, expr, ids))
  return out


def _tfds_split(builder, expr, with_image):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = builder.as_dataset(split=expr, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  keys = ("image/id", "captions") + (("image",) if with_image else ())
  return ds.map(lambda ex: {k: ex[k] for k in keys})


def _tfds_chunks(builder, expr, ids):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  chunk, start = [], 0
  for i, ex in enumerate(tfds.as_numpy(_tfds_split(builder, expr, with_image=True))):
    if i >= len(ids) or int(ex["image/id"]) != ids[i]:
      raise ValueError(f"TFDS coco_captions {expr} changed order between two reads; rebuild it")
    chunk.append(ex["image"])
    if len(chunk) == source.JPEG_CHUNK:
      yield start, chunk
      start, chunk = start + len(chunk), []
  if chunk:
    yield start, chunk
