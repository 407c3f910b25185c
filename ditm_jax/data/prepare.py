"""`--mode=prepare`: raw COCO / Flickr30K to TFRecord shards plus a manifest (DESIGN §5).

  python -m ditm_jax.main --config=configs/coco.py --mode=prepare \
      --config.data.raw_dir=RAW --config.data.dir=PREPARED

Reads, per split of `config.data.splits`, one of three layouts (`config.data.format`), each
with its reader in `readers/`: 'precomp' (VSE-infinity / SCAN precomputed regions), 'karpathy'
(Karpathy's split JSON plus the image files) and 'tfds' (TFDS `coco_captions`, never downloaded).

Every image keeps its first five captions. Captions are tokenised (bigru: a word vocabulary
built on the training split; bert: the tokenizer of `config.model.bert_path`), scored for
descriptiveness with the idf and CDF fitted on the training split only, and written with their
image to `records`. Everything goes to `<dir>.incomplete` first, which is renamed to `dir`
once the manifest is written, so `dir` is either complete or absent; an error removes it.
Inputs and output are local paths (copy the result to gs:// for Cloud TPU training; training
reads it through tf.io.gfile). Memory stays at one chunk of images plus the captions.
"""

import itertools
import json
import os
import resource
import shutil
import time

import numpy as np

from ditm_jax.data import packing_stats
from ditm_jax.data import records
from ditm_jax.data import vocab as vocab_lib
from ditm_jax.data.readers import karpathy
from ditm_jax.data.readers import precomp
from ditm_jax.data.readers import source
from ditm_jax.data.readers import tfds as tfds_reader

_TOKENIZE_CHUNK = 10000  # captions per BERT tokenizer call


def run(config):
  """Prepares `config.data.raw_dir` into `config.data.dir`; prints and returns the manifest."""
  t0 = time.perf_counter()
  manifest = prepare(config)
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  for name, s in manifest["splits"].items():
    print(f"{name}: {s['num_images']} images, {s['num_captions']} captions, "
          f"{len(s['shards'])} shard(s), mean descriptiveness {s['desc_mean']:.3f} ({s['layout']})")
  print(f"Prepared {config.data.dir} in {time.perf_counter() - t0:.1f}s "
        f"(peak RSS {rss:.0f} MB)", flush=True)
  return manifest


def prepare(config):
  """Reads, validates, tokenises, scores and writes every split; returns the manifest."""
  d = config.data
  out = d.dir
  if not out:
    raise ValueError("config.data.dir is empty; pass --config.data.dir=<output directory>")
  if not d.raw_dir or not os.path.isdir(d.raw_dir):
    raise FileNotFoundError(f"config.data.raw_dir={d.raw_dir!r} is not a directory; pass "
                            "--config.data.raw_dir=<directory with the raw data>")
  _check_output(out)
  records.settings(config)  # validates the text tower and split names
  names = records.split_names(config)
  readers = {"precomp": precomp.read, "karpathy": karpathy.read, "tfds": tfds_reader.read}
  if d.format not in readers:
    raise ValueError(f"config.data.format={d.format!r} is not known; use one of "
                     f"{sorted(readers)}")
  if (d.format == "precomp") != (config.model.image == "regions"):
    raise ValueError(f"config.data.format={d.format!r} does not fit config.model.image="
                     f"{config.model.image!r}: 'precomp' gives regions, 'karpathy' and 'tfds' "
                     "give pixels (model.image='vit')")
  sources = readers[d.format](config, names)  # validates every split before writing any

  from ditm_jax import descriptiveness  # pylint: disable=g-import-not-at-top
  train = sources[d.train_split]
  tokenizer, encode = _tokenizer(config, train.captions)
  scorer, train_desc = descriptiveness.fit_score(
      train.captions, stop_words=config.descriptiveness.stop_words,
      normalize=config.descriptiveness.normalize)

  tmp = out.rstrip("/") + ".incomplete"
  if os.path.exists(tmp):
    shutil.rmtree(tmp)  # left by an interrupted prepare
  os.makedirs(tmp)
  try:
    splits = {}
    for name in names:
      src = sources[name]
      desc = train_desc if name == d.train_split else scorer.score(src.captions)
      tokens, lengths = encode(src.captions)
      shards = min(d.train_shards, src.num_images) if name == d.train_split else 1
      splits[name] = _write_split(tmp, src, tokens, lengths, desc, shards, config)
      if src.relevance is not None:
        splits[name]["relevance"] = records.relevance_file(name)
        np.save(os.path.join(tmp, records.relevance_file(name)), src.relevance)
    with open(os.path.join(tmp, records.DESCRIPTIVENESS), "w") as f:
      json.dump(scorer.to_dict(), f)
    values = records.settings(config, tokenizer.get("fingerprint"))
    manifest = {
        "format": records.FORMAT,
        "settings": values,
        "settings_hash": records.settings_hash(values),
        "image": values["image"],
        "feature_shape": values.get("feature_shape"),
        "captions_per_image": source.CAPTIONS_PER_IMAGE,
        "max_tokens": int(d.max_tokens),
        "train_split": d.train_split,
        "tokenizer": tokenizer,
        "descriptiveness": {
            "file": records.DESCRIPTIVENESS, "fitted_on": d.train_split,
            "num_captions": scorer.num_captions, "vocabulary": len(scorer.words),
            "knots": int(scorer.knots_c.size), "stop_words": scorer.stop_words,
            "normalize": scorer.normalize},
        "splits": splits,
        "raw": {"format": d.format, "raw_dir": d.raw_dir},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with open(os.path.join(tmp, records.MANIFEST), "w") as f:
      json.dump(manifest, f, indent=1)
    if os.path.isdir(out):
      os.rmdir(out)  # empty (checked above)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest


def _check_output(out):
  if "://" in out:
    raise ValueError(f"config.data.dir={out} is not a local path; prepare writes to local disk "
                     "(then copy the directory, e.g. gsutil -m cp -r, for training from there)")
  if os.path.isdir(out) and os.listdir(out):
    what = ("already holds prepared data" if os.path.exists(os.path.join(out, records.MANIFEST))
            else "is not empty")
    raise ValueError(f"config.data.dir={out} {what}; delete it or pass another "
                     "--config.data.dir")
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"config.data.dir={out} is a file; pass a directory path")


def _tokenizer(config, train_captions):
  """(manifest entry, encode(captions) -> (tokens (N, L) int32, lengths (N,) int32))."""
  length = config.data.max_tokens
  if config.model.text == "bigru":
    vocab = vocab_lib.Vocab.build(train_captions)
    entry = {"kind": "bigru", "vocab": vocab.itos, "vocab_size": len(vocab),
             "pad_id": vocab_lib.PAD, "mask_id": vocab_lib.UNK, "keep_ends": False}
    return entry, lambda captions: vocab.encode(captions, length)
  tok = records._bert_tokenizer(config)  # pylint: disable=protected-access
  hf = tok.hf_tokenizer
  if hf.mask_token_id is None or hf.pad_token_id is None:
    raise ValueError(f"the tokenizer in {config.model.bert_path} has no [MASK] or [PAD] "
                     "token; use a BERT checkpoint's tokenizer")
  entry = {"kind": "bert", "path": str(config.model.bert_path), "vocab_size": tok.vocab_size,
           "fingerprint": records.fingerprint(hf), "pad_id": hf.pad_token_id,
           "mask_id": hf.mask_token_id, "keep_ends": True}

  def encode(captions):
    ids, lengths = [], []
    for a in range(0, len(captions), _TOKENIZE_CHUNK):
      chunk_ids, chunk_lengths = tok.ids_and_lengths(captions[a:a + _TOKENIZE_CHUNK])
      ids.append(chunk_ids)
      lengths.append(chunk_lengths)
    return np.concatenate(ids), np.concatenate(lengths)
  return entry, encode


def _write_split(directory, src, tokens, lengths, desc, num_shards, config):
  """Writes `src` round-robin into `num_shards` TFRecord files; returns its manifest entry."""
  c = source.CAPTIONS_PER_IMAGE
  names = records.shard_names(src.name, num_shards)
  counts = [0] * num_shards
  chunks = src.chunks()
  first = next(chunks)  # read and checked before any file is opened
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  writers = [tf.io.TFRecordWriter(os.path.join(directory, n)) for n in names]
  t0, done, report = time.perf_counter(), 0, max(src.num_images // 10, 1000)
  try:
    for start, chunk in itertools.chain([first], chunks):
      for j, image in enumerate(chunk):
        i = start + j
        caps = slice(i * c, (i + 1) * c)
        image_arg = {"regions": image} if isinstance(image, np.ndarray) else {"jpeg": image}
        writers[i % num_shards].write(records.example(
            i, src.image_ids[i], tokens[caps], lengths[caps], desc[caps], src.captions[caps],
            **image_arg))
        counts[i % num_shards] += 1
      done = start + len(chunk)
      if done // report != (start // report) and done < src.num_images:
        rate = done / (time.perf_counter() - t0)
        print(f"{src.name}: {done}/{src.num_images} images ({rate:.0f}/s)", flush=True)
  finally:
    for w in writers:
      w.close()
  if done != src.num_images:
    raise ValueError(f"split {src.name}: read {done} images, expected {src.num_images}")
  return {
      "num_images": src.num_images, "num_captions": src.num_images * c,
      "shards": names, "shard_counts": counts, "layout": src.layout,
      "desc_mean": float(np.mean(desc)), "desc_std": float(np.std(desc)),
      "truncated_captions": int(np.sum(lengths >= config.data.max_tokens)),
      # For the packing capacities of training (`packing_stats.derive`): K-caption totals.
      "caption_sum_counts": packing_stats.caption_sum_counts(
          np.reshape(lengths, (-1, c)), config.data.max_tokens),
  }
