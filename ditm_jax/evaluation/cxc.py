"""Crisscrossed Captions (CxC) evaluation on the COCO Karpathy 5K test split.

Files, under `data_dir`:
- `cxc/sits_test.csv` (caption, image, agg_score, sampling_method): caption-
  image ratings; `cxc/sts_test.csv` caption-caption and `cxc/sis_test.csv`
  image-image ratings, scores 0-5.
- `cxc/coco_test_ids.npy`: int64 COCO sent ids of the 25,000 test captions;
  caption row `k` has sent id `ids[k]` (CxC names it
  `COCO_val2014:sentid:<id>`).
- `coco/testall_ids.txt`: COCO image id of every caption row, five rows per
  image; images are indexed in this order (names like
  `COCO_val2014_000000391895.jpg`).

Positives (as in the CxC paper's retrieval tasks):
- image<->text: SITS pairs with agg_score >= 3;
- text->text: the other four captions of the same image plus STS pairs with
  agg_score >= 3, both ways;
- image->image: SIS pairs with agg_score >= 2.5, both ways; images without
  any are not queries.
A query is a hit at K when any of its positives is among its top K (ranks
count candidates scoring strictly higher, as in `recall`); queries without
positives are skipped, and in text->text and image->image the query itself is
not a candidate.
"""
import csv
import dataclasses
import pathlib
import re

import numpy as np

from ditm_jax.evaluation import recall

SITS_THRESHOLD = 3.0
STS_THRESHOLD = 3.0
SIS_THRESHOLD = 2.5
_KS = (1, 5, 10)


@dataclasses.dataclass(frozen=True)
class CxcPositives:
  """CxC annotations as indices into the 5K test (images, caption rows).

  Attributes:
    n_images: number of test images (5,000).
    n_captions: number of test captions (25,000).
    image_text: (P, 2) int64 (image, caption) positives.
    text_text: (Q, 2) int64 (query caption, positive caption), symmetric.
    image_image: (R, 2) int64 (query image, positive image), symmetric.
    sits_pairs: (n, 2) int64 (image, caption) of every SITS row, file order.
    sits_scores: (n,) float64 agg_score of those rows.
    sts_pairs: (n, 2) int64 (caption, caption) of every STS row.
    sts_scores: (n,) float64.
    sis_pairs: (n, 2) int64 (image, image) of every SIS row.
    sis_scores: (n,) float64.
  """
  n_images: int
  n_captions: int
  image_text: np.ndarray
  text_text: np.ndarray
  image_image: np.ndarray
  sits_pairs: np.ndarray
  sits_scores: np.ndarray
  sts_pairs: np.ndarray
  sts_scores: np.ndarray
  sis_pairs: np.ndarray
  sis_scores: np.ndarray


def _require(path):
  if not path.is_file():
    raise FileNotFoundError(
        f'{path} not found: CxC evaluation needs cxc/sits_test.csv, '
        'cxc/sts_test.csv, cxc/sis_test.csv, cxc/coco_test_ids.npy and '
        'coco/testall_ids.txt under the data directory.')
  return path


def _read_ratings(path, columns, to_a, to_b):
  """(pairs (n, 2) int64, scores (n,) float64) from a CxC ratings CSV."""
  with open(_require(path), newline='') as f:
    reader = csv.DictReader(f)
    missing = set(columns) - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f'{path}: missing columns {sorted(missing)}.')
    pairs, scores = [], []
    for line, row in enumerate(reader, start=2):
      try:
        pairs.append((to_a(row[columns[0]]), to_b(row[columns[1]])))
        scores.append(float(row['agg_score']))
      except (KeyError, ValueError) as e:
        raise ValueError(f'{path}, line {line}: {e}') from None
  return (np.asarray(pairs, np.int64).reshape(-1, 2),
          np.asarray(scores, np.float64))


def _symmetric(pairs):
  both = np.concatenate([pairs, pairs[:, ::-1]])
  both = both[both[:, 0] != both[:, 1]]
  return np.unique(both, axis=0)


def load_positives(data_dir):
  """Reads the CxC test annotations; see the module docstring."""
  data_dir = pathlib.Path(data_dir)
  ids_path = _require(data_dir / 'coco' / 'testall_ids.txt')
  row_image = np.loadtxt(ids_path, dtype=np.int64, ndmin=1)
  if row_image.size % 5 or np.any(row_image.reshape(-1, 5) !=
                                  row_image[::5, None]):
    raise ValueError(f'{ids_path}: expected five consecutive lines per image.')
  image_ids = row_image[::5]
  sent_path = _require(data_dir / 'cxc' / 'coco_test_ids.npy')
  sent_ids = np.load(sent_path)
  if sent_ids.shape != row_image.shape:
    raise ValueError(f'{sent_path} has {sent_ids.shape[0]} caption ids, '
                     f'{ids_path} {row_image.size} caption lines.')
  caption_of = {int(s): k for k, s in enumerate(sent_ids)}
  image_of = {int(i): k for k, i in enumerate(image_ids)}

  def caption(name):
    sent = int(name.rsplit(':', 1)[-1])
    if sent not in caption_of:
      raise ValueError(f'caption {name} is not in {sent_path}')
    return caption_of[sent]

  def image(name):
    match = re.search(r'(\d+)\.\w+$', name)
    if not match or int(match.group(1)) not in image_of:
      raise ValueError(f'image {name} is not in {ids_path}')
    return image_of[int(match.group(1))]

  cxc = data_dir / 'cxc'
  sits, sits_s = _read_ratings(cxc / 'sits_test.csv', ('image', 'caption'),
                               image, caption)
  sts, sts_s = _read_ratings(cxc / 'sts_test.csv', ('caption1', 'caption2'),
                             caption, caption)
  sis, sis_s = _read_ratings(cxc / 'sis_test.csv', ('image1', 'image2'),
                             image, image)
  n_cap = row_image.size
  rows = np.arange(n_cap)
  co = rows.reshape(-1, 5)
  co_pairs = np.stack([np.repeat(rows, 5), co[rows // 5].ravel()], axis=1)
  return CxcPositives(
      n_images=image_ids.size,
      n_captions=n_cap,
      image_text=np.unique(sits[sits_s >= SITS_THRESHOLD], axis=0),
      text_text=_symmetric(np.concatenate(
          [co_pairs, sts[sts_s >= STS_THRESHOLD]])),
      image_image=_symmetric(sis[sis_s >= SIS_THRESHOLD]),
      sits_pairs=sits, sits_scores=sits_s,
      sts_pairs=sts, sts_scores=sts_s,
      sis_pairs=sis, sis_scores=sis_s)


def average_ranks(x):
  """1-based ranks of x, ties sharing their average rank."""
  x = np.asarray(x)
  order = np.argsort(x, kind='stable')
  ordered = x[order]
  starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
  ends = np.r_[starts[1:], x.size]  # exclusive
  ranks = np.empty(x.size, np.float64)
  ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
  return ranks


def spearman(x, y):
  """Spearman rank correlation (Pearson correlation of average ranks)."""
  rx, ry = average_ranks(x), average_ranks(y)
  rx, ry = rx - rx.mean(), ry - ry.mean()
  denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
  return float((rx * ry).sum() / denom) if denom > 0 else float('nan')


def _recalls(ranks, prefix):
  ranks = np.asarray(ranks)
  ranks = ranks[ranks >= 0]
  return {f'{prefix}_r{k}': 100.0 * float(np.mean(ranks < k)) for k in _KS}


def _pair_sims(a, b, pairs):
  return np.einsum('nd,nd->n', a[pairs[:, 0]], b[pairs[:, 1]])


def cxc_metrics(img_emb, txt_emb, positives, chunk=recall.DEFAULT_CHUNK):
  """CxC retrieval recalls and rating correlations.

  Args:
    img_emb: (n_images, D) image embeddings, 5K test order.
    txt_emb: (n_captions, D) caption embeddings, caption-file order.
    positives: a `CxcPositives`.
    chunk: query rows per device step (a step holds chunk x n_candidates).

  Returns:
    `{i2t,t2i,t2t,i2i}_r{1,5,10}` (percent, over queries with positives) and
    `sits_spearman`, `sts_spearman`, `sis_spearman`: Spearman correlation of
    the dot-product similarity with agg_score over every rated row of the
    SITS, STS and SIS files (all sampling methods, scores below the positive
    thresholds included). Similarity is the dot product: pass L2-normalised
    embeddings for cosine.
  """
  img, txt = np.asarray(img_emb, np.float32), np.asarray(txt_emb, np.float32)
  p = positives
  if img.shape[0] != p.n_images or txt.shape[0] != p.n_captions:
    raise ValueError(f'Expected {p.n_images} image and {p.n_captions} caption '
                     f'embeddings, got {img.shape} and {txt.shape}.')
  out = {}
  tasks = (('i2t', img, txt, p.image_text, False),
           ('t2i', txt, img, p.image_text[:, ::-1], False),
           ('t2t', txt, txt, p.text_text, True),
           ('i2i', img, img, p.image_image, True))
  for name, queries, cands, pairs, same_set in tasks:
    index = recall.pad_positives(pairs, queries.shape[0])
    ranks = recall.multi_positive_ranks(queries, cands, index,
                                        exclude_self=same_set, chunk=chunk)
    out.update(_recalls(ranks, name))
  out['sits_spearman'] = spearman(_pair_sims(img, txt, p.sits_pairs),
                                  p.sits_scores)
  out['sts_spearman'] = spearman(_pair_sims(txt, txt, p.sts_pairs),
                                 p.sts_scores)
  out['sis_spearman'] = spearman(_pair_sims(img, img, p.sis_pairs),
                                 p.sis_scores)
  return out
