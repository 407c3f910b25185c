"""Reader of the VSE-infinity / SCAN precomputed layout (regions), for `prepare`.

`{split}_ims.npy` (N, R, F) is read memory-mapped a chunk at a time, `{split}_caps.txt` holds one
caption per line, and optionally `{split}_ids.txt` an image id per caption line, or per image.
Five caption lines per feature row; or, as in some dev/test files, one feature row per caption
line, where rows 5i..5i+4 repeat image i and row 5i is kept. Without an ids file the image id is
the row. An optional `{split}_relevance.npy` carries graded truth for evaluation.
"""
import os

import numpy as np

from ditm_jax.data.readers import source

_REPEAT_CHECKS = 5  # groups checked to be repeats in the one-row-per-caption layout


def read(config, names):
  """{split: SplitSource} of every split in `names`, each checked before any is written."""
  return {name: _read_split(config, name) for name in names}


def _read_split(config, split):
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
  if lines == source.CAPTIONS_PER_IMAGE * rows:
    n, stride, layout = rows, 1, "five caption lines per feature row"
  elif lines == rows and rows % source.CAPTIONS_PER_IMAGE == 0:
    n, stride = rows // source.CAPTIONS_PER_IMAGE, source.CAPTIONS_PER_IMAGE
    layout = "one feature row per caption line; rows 5i..5i+4 repeat image i, row 5i kept"
  else:
    raise ValueError(
        f"{caps} has {lines} caption lines but {ims} has {rows} feature rows; expected five "
        f"lines per row ({source.CAPTIONS_PER_IMAGE * rows}) or one line per row with rows in "
        "groups of five; fix the pair so captions line up with images")
  image_ids = _read_ids(ids, n, lines)
  if image_ids is None:
    image_ids = np.arange(n, dtype=np.int64)
    layout += f"; no {split}_ids.txt, image id = image index"
  del features
  if stride > 1:
    _check_repeats(ims, n, stride, config.seed)
  relevance = _read_relevance(os.path.join(d.raw_dir, f"{split}_relevance.npy"), n, lines)
  if relevance is not None:
    layout += f"; graded truth {split}_relevance.npy ({len(relevance)} pairs)"
  return source.SplitSource(name=split, captions=captions, image_ids=image_ids, layout=layout,
                            chunks=lambda: _feature_chunks(ims, n, stride, caps),
                            relevance=relevance)


def _read_relevance(path, n, lines):
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


def _read_ids(path, n, lines):
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
  for start in range(0, n, source.FEATURE_CHUNK):
    count = min(source.FEATURE_CHUNK, n - start)
    chunk = _rows(path, start * stride, count, stride)
    finite = np.isfinite(chunk).all(axis=(1, 2))
    if not finite.all():
      i = start + int(np.argmin(finite))
      raise ValueError(f"{path} row {i * stride} (image {i}) has NaN or inf features; fix or "
                       f"remove that image together with its five lines in {caps}")
    yield start, chunk
