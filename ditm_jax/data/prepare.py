"""`--mode=prepare`: raw COCO / Flickr30K to TFRecord shards plus a manifest (DESIGN §5).

  python -m ditm_jax.main --config=configs/coco.py --mode=prepare \
      --config.data.raw_dir=RAW --config.data.dir=PREPARED

Reads, per split of `config.data.splits`, one of three layouts (`config.data.format`):

- 'precomp': VSE-infinity / SCAN precomputed regions. `{split}_ims.npy` (N, R, F) read
  memory-mapped a chunk at a time, `{split}_caps.txt` one caption per line, and optionally
  `{split}_ids.txt` (an image id per caption line, or per image). Five caption lines per
  feature row; or, as in some dev/test files, one feature row per caption line, where rows
  5i..5i+4 repeat image i and row 5i is kept. Without an ids file the image id is the row.
- 'karpathy': Karpathy's split JSON (`config.data.karpathy_json`) plus the image files under
  `config.data.image_dir` (default: raw_dir); the encoded files are stored as they are.
  `config.data.karpathy_splits` maps each split to Karpathy splits ('train,restval').
- 'tfds': TFDS `coco_captions` (Karpathy splits) from the TFDS data_dir `raw_dir`, never
  downloaded; read twice (captions, then images).

Every image keeps its first five captions. Captions are tokenised (bigru: a word vocabulary
built on the training split; bert: the tokenizer of `config.model.bert_path`), scored for
descriptiveness with the idf and CDF fitted on the training split only, and written with their
image to `records`. Everything goes to `<dir>.incomplete` first, which is renamed to `dir`
once the manifest is written, so `dir` is either complete or absent; an error removes it.
Inputs and output are local paths (copy the result to gs:// for Cloud TPU training; training
reads it through tf.io.gfile). Memory stays at one chunk of images plus the captions.
"""

import dataclasses
import itertools
import json
import os
import resource
import shutil
import time
from typing import Callable, Iterator, Optional

import numpy as np

from ditm_jax.data import records
from ditm_jax.data import vocab as vocab_lib
from ditm_jax.data import packing_stats

CAPTIONS_PER_IMAGE = 5  # the COCO / Flickr30K protocol: five captions per image
FEATURE_CHUNK = 128  # feature rows read (and held) at a time
JPEG_CHUNK = 64  # image files read at a time
_TOKENIZE_CHUNK = 10000  # captions per BERT tokenizer call
_REPEAT_CHECKS = 5  # groups checked to be repeats in the one-row-per-caption layout


@dataclasses.dataclass
class SplitSource:
  """A split as read from raw data: captions in memory, images streamed in chunks."""
  name: str
  captions: list  # 5 * N, image-major
  image_ids: np.ndarray  # (N,) int64
  chunks: Callable[[], Iterator[tuple[int, object]]]  # -> (first image, (n, R, F) or [bytes])
  layout: str  # how the raw files were read, for the manifest
  relevance: Optional[np.ndarray] = None  # (M, 3) graded truth (image, caption, grade), if any

  @property
  def num_images(self):
    return len(self.image_ids)


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
  readers = {"precomp": _read_precomp, "karpathy": _read_karpathy, "tfds": _read_tfds}
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
        "captions_per_image": CAPTIONS_PER_IMAGE,
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
  c = CAPTIONS_PER_IMAGE
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
      # For the packing capacities of training (`packing_stats.derive`): totals of K-caption subsets.
      "caption_sum_counts": packing_stats.caption_sum_counts(
          np.reshape(lengths, (-1, c)), config.data.max_tokens),
  }


# ------------------------------------------------------------------ precomputed regions
def _read_precomp(config, names):
  return {name: _precomp_split(config, name) for name in names}


def _precomp_split(config, split):
  d = config.data
  ims, caps, ids = (os.path.join(d.raw_dir, f"{split}_{x}")
                    for x in ("ims.npy", "caps.txt", "ids.txt"))
  for path in (ims, caps):
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"{path} is missing; the precomputed layout needs {split}_ims.npy and "
          f"{split}_caps.txt in config.data.raw_dir for every split in config.data.splits "
          f"({d.splits!r}): add the files or drop the split")
  try:
    features = np.load(ims, mmap_mode="r")
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f"{ims} is not a readable .npy file ({e}); re-create it with np.save") \
        from None
  want = (d.num_regions, d.feature_dim)
  if features.ndim != 3 or features.dtype.kind != "f":
    raise ValueError(f"{ims} holds {features.dtype} {features.shape}; expected float "
                     f"(N, {want[0]}, {want[1]}) region features")
  if features.shape[2] != want[1]:
    raise ValueError(f"{ims} has feature width {features.shape[2]} but config.data.feature_dim"
                     f"={want[1]}; pass --config.data.feature_dim={features.shape[2]} or use "
                     f"the {want[1]}-d features")
  if features.shape[1] != want[0]:
    raise ValueError(f"{ims} has {features.shape[1]} regions per image but "
                     f"config.data.num_regions={want[0]}; pass "
                     f"--config.data.num_regions={features.shape[1]}")
  if not features.flags.c_contiguous:
    raise ValueError(f"{ims} is stored in Fortran order; re-save it with "
                     "np.save(path, np.ascontiguousarray(x))")
  captions = read_caption_lines(caps)
  rows, lines = features.shape[0], len(captions)
  if lines == CAPTIONS_PER_IMAGE * rows:
    n, stride, layout = rows, 1, "five caption lines per feature row"
  elif lines == rows and rows % CAPTIONS_PER_IMAGE == 0:
    n, stride = rows // CAPTIONS_PER_IMAGE, CAPTIONS_PER_IMAGE
    layout = "one feature row per caption line; rows 5i..5i+4 repeat image i, row 5i kept"
  else:
    raise ValueError(
        f"{caps} has {lines} caption lines but {ims} has {rows} feature rows; expected five "
        f"lines per row ({CAPTIONS_PER_IMAGE * rows}) or one line per row with rows in groups "
        "of five; fix the pair so captions line up with images")
  image_ids = _precomp_ids(ids, n, lines)
  if image_ids is None:
    image_ids = np.arange(n, dtype=np.int64)
    layout += f"; no {split}_ids.txt, image id = image index"
  del features
  if stride > 1:
    _check_repeats(ims, n, stride, config.seed)
  relevance = _precomp_relevance(os.path.join(d.raw_dir, f"{split}_relevance.npy"), n, lines)
  if relevance is not None:
    layout += f"; graded truth {split}_relevance.npy ({len(relevance)} pairs)"
  return SplitSource(name=split, captions=captions, image_ids=image_ids, layout=layout,
                     chunks=lambda: _feature_chunks(ims, n, stride, caps), relevance=relevance)


def _precomp_relevance(path, n, lines):
  """Optional graded truth: (M, 3) int rows (image index, caption line, grade > 0), or None.

  Pairs not listed are irrelevant. Evaluation reads it for nDCG and the order of an image's
  own captions (`evaluation.graded`); training never sees it.
  """
  if not os.path.isfile(path):
    return None
  fix = ("it must hold (M, 3) integers: image index (0..N-1), caption line (0..5N-1) and a "
         "grade > 0 per relevant pair, each pair once")
  try:
    triples = np.load(path)
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f"{path} is not a readable .npy file ({e}); {fix}") from None
  if triples.ndim != 2 or triples.shape[1] != 3 or triples.dtype.kind not in "iu":
    raise ValueError(f"{path} holds {triples.dtype} {triples.shape}; {fix}")
  triples = triples.astype(np.int64)
  for col, (what, limit) in enumerate((("image index", n), ("caption line", lines))):
    bad = np.flatnonzero((triples[:, col] < 0) | (triples[:, col] >= limit))
    if bad.size:
      raise ValueError(f"{path} row {bad[0]}: {what} {triples[bad[0], col]} is outside "
                       f"0..{limit - 1}; {fix}")
  bad = np.flatnonzero(triples[:, 2] <= 0)
  if bad.size:
    raise ValueError(f"{path} row {bad[0]}: grade {triples[bad[0], 2]} is not > 0; {fix}")
  if len(np.unique(triples[:, 0] * lines + triples[:, 1])) != len(triples):
    raise ValueError(f"{path} lists a pair twice; {fix}")
  return triples


def read_caption_lines(path):
  """The lines of a caption file; raises ValueError naming the first empty line."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not UTF-8 text ({e}); convert it to UTF-8") from None
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  lines = [line.rstrip("\r").strip() for line in lines]
  if not lines:
    raise ValueError(f"{path} has no captions; it must hold one caption per line")
  if not all(lines):
    bad = lines.index("") + 1
    raise ValueError(f"{path} line {bad} is empty or whitespace-only; every line must be a "
                     "caption (five per image, in image order): write the missing caption")
  return lines


def _precomp_ids(path, n, lines):
  """(N,) int64 image ids from an ids file with one id per caption line or per image."""
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    raw = [t for t in f.read().split("\n") if t.strip()]
  try:
    ids = np.array([int(t) for t in raw], np.int64)
  except ValueError:
    bad = next(i for i, t in enumerate(raw) if not t.strip().lstrip("-").isdigit())
    raise ValueError(f"{path} line {bad + 1} ({raw[bad]!r}) is not an integer image id") from None
  if len(ids) == n:
    return ids
  if len(ids) == lines:
    groups = ids.reshape(n, -1)
    bad = np.flatnonzero((groups != groups[:, :1]).any(1))
    if len(bad):
      i = int(bad[0])
      raise ValueError(f"{path} lines {i * groups.shape[1] + 1}-{(i + 1) * groups.shape[1]} "
                       f"give different image ids {groups[i].tolist()} to one image's captions; "
                       "fix the ids so each image's captions share its id")
    return groups[:, 0].copy()
  raise ValueError(f"{path} has {len(ids)} ids; expected one per image ({n}) or per caption "
                   f"line ({lines}); fix it or delete it (ids then default to the image index)")


def _check_repeats(path, n, stride, seed):
  """Checks that a few groups of `stride` feature rows are copies of one image."""
  rng = np.random.default_rng(seed)
  groups = np.unique(np.concatenate([[0], rng.integers(0, n, _REPEAT_CHECKS - 1)]))
  for g in groups:
    rows = _rows(path, g * stride, stride)
    if not np.array_equal(rows, np.broadcast_to(rows[:1], rows.shape), equal_nan=True):
      raise ValueError(f"{path}: rows {g * stride}..{g * stride + stride - 1} differ, but with "
                       "one feature row per caption line the five rows of an image must be "
                       "copies; give one row per image instead (five caption lines per row)")


def _rows(path, start, count, stride=1):
  """float32 rows start, start+stride, ... (count of them), from a short-lived memory map.

  Mapping only the rows needed and unmapping them at once keeps the resident memory at one
  chunk however large the file is.
  """
  header = np.load(path, mmap_mode="r")
  _, r, f = header.shape
  row_bytes = r * f * header.dtype.itemsize
  offset, dtype = header.offset, header.dtype
  del header
  span = (count - 1) * stride + 1
  view = np.memmap(path, dtype, "r", offset=offset + start * row_bytes, shape=(span, r, f))
  out = np.array(view[::stride], np.float32)
  del view
  return out


def _feature_chunks(path, n, stride, caps):
  for start in range(0, n, FEATURE_CHUNK):
    count = min(FEATURE_CHUNK, n - start)
    chunk = _rows(path, start * stride, count, stride)
    finite = np.isfinite(chunk).all(axis=(1, 2))
    if not finite.all():
      i = start + int(np.argmin(finite))
      raise ValueError(f"{path} row {i * stride} (image {i}) has NaN or inf features; fix or "
                       f"remove that image together with its five lines in {caps}")
    yield start, chunk


# ------------------------------------------------------------------ Karpathy JSON + images
def _karpathy_mapping(config, names, what):
  """Karpathy split name -> our split name, from `config.data.karpathy_splits`."""
  spec = config.data.karpathy_splits
  missing = [n for n in names if n not in spec]
  if missing:
    raise ValueError(f"config.data.karpathy_splits has no entry for split(s) {missing} of "
                     f"config.data.splits; map each to {what} splits, e.g. "
                     "--config.data.karpathy_splits.dev=val")
  return {k.strip(): n for n in names for k in spec[n].split(",") if k.strip()}


def _read_karpathy(config, names):
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
  mapping = _karpathy_mapping(config, names, "Karpathy ('train', 'restval', 'val', 'test')")
  image_dir = d.image_dir or d.raw_dir
  per_split = {n: ([], [], []) for n in names}  # captions, ids, files
  missing = []
  for k, img in enumerate(images):
    split = mapping.get(img.get("split"))
    if split is None:
      continue
    name = img.get("filename", f"images[{k}]")
    sentences = [str(s.get("raw", "")).strip() for s in img.get("sentences", [])]
    if len(sentences) < CAPTIONS_PER_IMAGE:
      raise ValueError(f"{path}: image {name} has {len(sentences)} sentences, fewer than the "
                       f"{CAPTIONS_PER_IMAGE} per image of the protocol; fix the file")
    if not all(sentences[:CAPTIONS_PER_IMAGE]):
      raise ValueError(f"{path}: image {name} has an empty sentence among its first five; "
                       "fix the file")
    image_id = img.get("cocoid", img.get("imgid"))
    if image_id is None:
      raise ValueError(f"{path}: image {name} has neither 'cocoid' nor 'imgid'")
    file = os.path.join(image_dir, img.get("filepath", ""), name)
    if not os.path.isfile(file):
      missing.append(file)
    caps, ids, files = per_split[split]
    caps.extend(sentences[:CAPTIONS_PER_IMAGE])
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
  return {n: SplitSource(name=n, captions=caps, image_ids=np.array(ids, np.int64),
                         layout=f"Karpathy {d.karpathy_splits[n]!s}, encoded image files",
                         chunks=lambda files=files: _file_chunks(files))
          for n, (caps, ids, files) in per_split.items()}


def _file_chunks(files):
  for start in range(0, len(files), JPEG_CHUNK):
    chunk = []
    for file in files[start:start + JPEG_CHUNK]:
      with open(file, "rb") as f:
        data = f.read()
      if data[:2] != b"\xff\xd8":
        raise ValueError(f"{file} is not a JPEG file; convert it to JPEG")
      chunk.append(data)
    yield start, chunk


# ------------------------------------------------------------------ TFDS coco_captions
def _read_tfds(config, names):
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
  mapping = _karpathy_mapping(config, names, "TFDS coco_captions ('train', 'restval', 'val', "
                              "'test')")
  out = {}
  for name in names:
    expr = "+".join(k for k, n in mapping.items() if n == name)
    captions, ids = [], []
    for ex in tfds.as_numpy(_tfds_split(builder, expr, with_image=False)):
      texts = [t.decode("utf-8").strip() for t in ex["captions"]["text"]]
      if len(texts) < CAPTIONS_PER_IMAGE or not all(texts[:CAPTIONS_PER_IMAGE]):
        raise ValueError(f"TFDS coco_captions ({d.raw_dir}) image {ex['image/id']} has fewer "
                         "than five non-empty captions; rebuild the data set")
      captions.extend(texts[:CAPTIONS_PER_IMAGE])
      ids.append(int(ex["image/id"]))
    out[name] = SplitSource(name=name, captions=captions, image_ids=np.array(ids, np.int64),
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
    if len(chunk) == JPEG_CHUNK:
      yield start, chunk
      start, chunk = start + len(chunk), []
  if chunk:
    yield start, chunk
