"""The reference BERT text tower at real COCO caption lengths: packed into a fixed buffer, into
the buffer derived from the lengths, and padded, to show what packing saves on real text."""

import os
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ditm_jax.bench import flops
from ditm_jax.bench import setups
from ditm_jax.data import packing_stats
from ditm_jax.models import bert as bert_lib
from ditm_jax.models import encoders
from ditm_jax.models import packed
from ditm_jax.models import packing


def coco_caption_lengths(path=setups.COCO_CAPTIONS, max_tokens=40):
  """(images, 5) token counts of the captions in `path` (five lines per image): words and
  punctuation marks plus [CLS] and [SEP], a stand-in for WordPiece counts (no vocabulary
  here); None where the file is absent."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    counts = [len(re.findall(r"\w+|[^\w\s]", l.lower())) + 2 for l in f if l.strip()]
  return np.minimum(np.asarray(counts).reshape(-1, 5), max_tokens)


def text_tower_at_caption_lengths(lengths, bert=None, images=128, k=2, max_tokens=40,
                                  rounds=3, overflow=1e-3):
  """The BERT text tower's forward+backward on captions of `lengths` ((N, 5) token counts)
  with BERT's buffer fixed at 0.75, derived from `lengths` (`capacity`, as the trainer does:
  one device, two packed masks) and padded. `images` x `k` captions drawn as the pipeline
  draws them. Medians of `rounds` interleaved rounds, and matmul FLOPs."""
  rng = np.random.default_rng(0)
  chosen = rng.choice(len(lengths), images, replace=False)
  slots = np.argsort(rng.random((images, lengths.shape[1])), axis=1)[:, :k]
  n = lengths[chosen[:, None], slots].reshape(-1)
  mask = np.arange(max_tokens)[None, :] < n[:, None]
  cfg = bert_lib.BertConfig(**(bert or setups.REFERENCE_BERT))
  tokens = np.where(mask, rng.integers(1000, cfg.vocab_size, mask.shape), 0).astype(np.int32)
  args = (jnp.asarray(tokens), jnp.asarray(mask))
  counts = packing_stats.caption_sum_counts(lengths, max_tokens)[str(k)]
  fractions = {"fixed": 0.75, "derived": packing_stats.fraction(counts, images, k * max_tokens,
                                                                overflow / 2), "padded": 0.0}
  fns, out = {}, {"fractions": fractions, "mean_fill": float(mask.mean()), "gflop": {},
                  "fits": {}}
  for name, fraction in fractions.items():
    fits = fraction > 0 and bool(packing.fits(args[1], fraction))
    tower = (packed.PackedBertTextEncoder(cfg, embed_dim=1024, capacity=fraction, pack=fits)
             if fraction > 0 else encoders.BertTextEncoder(cfg, embed_dim=1024))
    params = jax.jit(tower.init)(jax.random.key(0), *args)["params"]
    grad = jax.jit(jax.grad(lambda p, t, m, tower=tower: jnp.sum(
        tower.apply({"params": p}, t, m) ** 2)))
    out["fits"][name], out["gflop"][name] = fits, flops.matmul_flops(grad, params, *args) / 1e9
    jax.block_until_ready(grad(params, *args))
    fns[name] = (grad, params)
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, (grad, params) in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(grad(params, *args))
      times[name].append(time.perf_counter() - t)
  out["median_s"] = {name: statistics.median(v) for name, v in times.items()}
  return out
