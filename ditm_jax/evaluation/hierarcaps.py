"""HierarCaps test: hierarchical text retrieval (Alper & Averbuch-Elor).

Each of the 1,000 test images has a chain of four captions from generic to
specific (`hierarcaps_test.csv`, column `captions`, levels joined by ` => `).
The metrics need a *root* embedding: the text encoder applied to the empty
string. For the BERT encoder that is the tokenizer's encoding of '' (just
`[CLS] [SEP]`, attention mask of length 2) through the same encoder, GPO
pooling and L2 normalisation as every caption.

All embeddings are L2-normalised here. Definitions used:
- Pool: every distinct caption string of every chain (exact string match:
  identical strings are one pool entry, embedded once).
- Sweep: for image embedding v and root r, steps s = 1..S (S = 50) put the
  query at `q_s = (1 - s/S) r + (s/S) v`. Retrieval is by cosine similarity,
  so this walks the great-circle arc from just past the root (s = 1) to the
  image itself (s = S); the root alone (s = 0) carries no image information
  and is not a step. At each step the pool caption with the highest cosine
  similarity to q_s is retrieved.
- precision = |R ∩ C| / |R| and recall = |R ∩ C| / |C|, with R the distinct
  captions retrieved over the sweep and C the distinct captions of the
  image's chain; both averaged over images.
- d_corr: mean over images of Kendall tau-b between the level (1..4) and the
  distance ||t_l - r|| of the level's text embedding from the root
  (equivalently the cosine distance); images whose four distances all tie
  are skipped.
"""
import csv
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from ditm_jax.evaluation import graded

LEVELS = 4
SEPARATOR = ' => '
SWEEP_STEPS = 50
_CHUNK = 128


def load_test(csv_path):
  """Reads `hierarcaps_test.csv`.

  Returns:
    (image_names, chains): the COCO file names (last part of `image_url`,
    e.g. `COCO_val2014_000000301718.jpg`) and, per image, a tuple of the four
    captions from generic to specific.
  """
  path = pathlib.Path(csv_path)
  if not path.is_file():
    raise FileNotFoundError(f'{path} not found: expected the HierarCaps test '
                            'CSV (columns id,captions,image_url).')
  names, chains = [], []
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.DictReader(f)
    missing = {'captions', 'image_url'} - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f'{path}: missing columns {sorted(missing)}.')
    for line, row in enumerate(reader, start=2):
      chain = tuple(c.strip() for c in row['captions'].split(SEPARATOR))
      if len(chain) != LEVELS or not all(chain):
        raise ValueError(f'{path}, line {line}: expected {LEVELS} non-empty '
                         f'captions joined by {SEPARATOR!r}, got {chain}.')
      names.append(row['image_url'].rstrip('/').rsplit('/', 1)[-1])
      chains.append(chain)
  return names, chains


def build_pool(chains):
  """(pool_texts, index): distinct caption strings and (N, 4) int pool ids.

  Embed `pool_texts` once and pass `pool_emb[index]` as `level_text_emb`.
  """
  ids = {}
  index = np.array([[ids.setdefault(c, len(ids)) for c in chain]
                    for chain in chains], np.int64).reshape(-1, LEVELS)
  return list(ids), index


def _normalize(x):
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=('steps',))
def _sweep(img, pool, root, steps):
  """(n, steps) pool ids retrieved along the root -> image sweep."""
  alpha = jnp.arange(1, steps + 1, dtype=jnp.float32) / steps
  to_root = pool @ root  # (P,)
  to_img = img @ pool.T  # (n, P)
  # q_s . t = (1 - a_s) (r . t) + a_s (v . t)
  scores = ((1 - alpha)[None, :, None] * to_root[None, None, :]
            + alpha[None, :, None] * to_img[:, None, :])
  return jnp.argmax(scores, axis=-1)


def hierarcaps_metrics(img_emb, level_text_emb, root_emb, chains,
                       steps=SWEEP_STEPS):
  """HierarCaps precision, recall and d_corr (see the module docstring).

  Args:
    img_emb: (N, D) image embeddings.
    level_text_emb: (N, 4, D) embeddings of each chain's captions, generic
      first. Where a string occurs in several chains, its first occurrence's
      embedding is the pool entry.
    root_emb: (D,) embedding of the empty text.
    chains: N tuples of four caption strings (from `load_test`).
    steps: points in the sweep.

  Returns:
    {'precision', 'recall', 'd_corr'} as floats.
  """
  img, levels = _normalize(img_emb), _normalize(level_text_emb)
  root = _normalize(root_emb)
  n = img.shape[0]
  if levels.shape != (n, LEVELS, img.shape[1]) or len(chains) != n:
    raise ValueError(f'Expected {n} chains and level embeddings of shape '
                     f'({n}, {LEVELS}, {img.shape[1]}); got {len(chains)} '
                     f'and {levels.shape}.')
  _, index = build_pool(chains)
  first = np.unique(index.ravel(), return_index=True)[1]
  pool = levels.reshape(-1, levels.shape[-1])[first]
  retrieved = np.concatenate([
      np.asarray(_sweep(img[s:s + _CHUNK], pool, root, steps))
      for s in range(0, n, _CHUNK)])
  ordered = np.sort(retrieved, axis=1)
  n_retrieved = 1 + np.sum(ordered[:, 1:] != ordered[:, :-1], axis=1)
  # A chain level counts once, at its first position in the chain.
  distinct = np.ones(index.shape, bool)
  for j in range(1, LEVELS):
    distinct[:, j] = ~np.any(index[:, :j] == index[:, j:j + 1], axis=1)
  found = np.any(retrieved[:, None, :] == index[:, :, None], axis=2) & distinct
  n_found = found.sum(axis=1)
  dist = np.linalg.norm(levels - root, axis=-1)
  tau = graded.kendall_tau(
      np.broadcast_to(np.arange(LEVELS), dist.shape), dist)
  tau = tau[~np.isnan(tau)]
  return {
      'precision': float(np.mean(n_found / n_retrieved)),
      'recall': float(np.mean(n_found / distinct.sum(axis=1))),
      'd_corr': float(tau.mean()) if tau.size else float('nan'),
  }
