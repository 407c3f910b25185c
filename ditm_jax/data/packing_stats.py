"""Packing capacities from the data: how many rows a device's batch of tokens or regions needs.

The towers pack a batch's valid positions into a buffer of C rows and run padded when a batch
does not fit (`packing`). A fixed fraction (`model.text_token_capacity`, 0.75) must cover the
longest captions a data set has; COCO's captions fill about a third of BERT's 40 positions, so
most of that buffer is padding again. Here C is derived from the data instead: the smallest C
that the positions of one device's batch exceed with probability at most `overflow`.

A device's batch is `units` independent images; each contributes a count (its K sampled
captions' tokens, or its kept regions) drawn from one distribution:

- captions: each image's K of C captions are drawn without replacement (`plan.caption_slots`),
  so an image's count is the sum over a uniform K-subset of its caption lengths
  (`caption_sum_counts`, from the training split's lengths; `prepare` stores them in the
  manifest). Token deletion at
  training time only shortens captions, so the bound holds with it.
- regions: each region is dropped with probability `drop`, and region 0 comes back when all
  are dropped (the one rule, `plan.region_keep`): Binomial(R, 1 - drop) kept regions, the
  all-dropped case counting as one (`kept_regions_pmf`).

The sum over `units` images has the `units`-fold convolution of that distribution
(`sum_pmf`, by FFT), and `rows_for` reads its upper tail. `derive` sets the config's
capacities that way before the trainer builds the model. NumPy only.
"""
import itertools
import math

import numpy as np


def caption_sum_counts(lengths: np.ndarray, max_tokens: int) -> dict[str, list[int]]:
  """For every K of 1..C, how many (image, K-subset of its captions) pairs have each total.

  Args:
    lengths: (N, C) valid tokens of each image's C captions.
    max_tokens: lengths are clipped here (the batches keep at most this many).

  Returns:
    {str(K): counts}, counts[s] = number of (image, K-subset) pairs with s tokens in all,
    trimmed after the last non-zero entry (JSON-ready: a manifest stores it).
  """
  lengths = np.minimum(np.asarray(lengths, np.int64), max_tokens)
  if lengths.ndim != 2 or lengths.shape[0] == 0:
    raise ValueError(f"lengths must be (images, captions) and non-empty, got {lengths.shape}")
  out = {}
  for k in range(1, lengths.shape[1] + 1):
    sums = [lengths[:, list(subset)].sum(axis=1)
            for subset in itertools.combinations(range(lengths.shape[1]), k)]
    out[str(k)] = np.bincount(np.concatenate(sums)).tolist()
  return out


def kept_regions_pmf(num_regions: int, drop: float) -> np.ndarray:
  """P(an image keeps r regions), r = 0..R: the distribution of `plan.region_keep`'s rule."""
  r = np.arange(num_regions + 1)
  pmf = np.array([math.comb(num_regions, n) for n in r], np.float64)
  pmf *= (1 - drop) ** r * drop ** (num_regions - r)
  pmf[1] += pmf[0]  # all dropped: region 0 is kept
  pmf[0] = 0.0
  return pmf


def sum_pmf(pmf: np.ndarray, units: int) -> np.ndarray:
  """Distribution of the sum of `units` independent draws from `pmf` (pmf[v] = P(v))."""
  pmf = np.asarray(pmf, np.float64) / np.sum(pmf)
  size = units * (len(pmf) - 1) + 1
  n = 1 << (size - 1).bit_length()
  out = np.fft.irfft(np.fft.rfft(pmf, n) ** units, n)[:size]
  return np.clip(out, 0.0, None)


def rows_for(pmf: np.ndarray, units: int, overflow: float) -> int:
  """The smallest C with P(sum of `units` draws from `pmf` > C) <= `overflow`."""
  if not 0 < overflow < 1:
    raise ValueError(f"overflow must be in (0, 1), got {overflow}")
  total = sum_pmf(pmf, units)
  above = np.cumsum(total[::-1])[::-1]  # above[c] = P(sum >= c)
  exceeds = np.append(above[1:], 0.0)  # P(sum > c)
  return int(np.argmax(exceeds <= overflow))


def fraction(pmf: np.ndarray, units: int, positions_per_unit: int, overflow: float) -> float:
  """`rows_for` as a fraction of the `units * positions_per_unit` positions of the batch."""
  return rows_for(pmf, units, overflow) / (units * positions_per_unit)


def derive(config, train, data_devices: int) -> list[str]:
  """Sets the packing capacities of `config.model` from the training split `train`.

  Where a tower packs (`model.text_token_capacity` with BERT, `model.region_capacity` with
  regions: > 0) and `model.packing_overflow` > 0, the fraction becomes the one that a device's
  batch (`batch_size / data_devices` images) exceeds with probability at most
  `packing_overflow / (packed masks x data_devices)`, so that at most that share of steps
  runs padded. `train` gives `caption_sum_counts(max_tokens)` (None: not recorded, the fixed
  fraction stays) and `num_regions` (None: no regions). Returns a line per capacity: the value
  and where it came from.
  """
  m, d = config.model, config.data
  overflow = m.packing_overflow
  units = config.batch_size // data_devices
  k, length = d.captions_per_image, d.max_tokens
  jobs = {}
  if m.text == "bert" and m.text_token_capacity > 0:
    counts = train.caption_sum_counts(length)
    jobs["text_token_capacity"] = (
        None if counts is None else counts.get(str(k)), k * length,
        "the training captions' token counts were not recorded (prepared before they were; "
        "prepare again to derive it)")
  if m.image == "regions" and m.region_capacity > 0 and train.num_regions:
    jobs["region_capacity"] = (kept_regions_pmf(train.num_regions, d.region_drop),
                               train.num_regions, "")
  lines = []
  for field, (pmf, positions, missing) in jobs.items():
    fixed = m[field]
    if overflow <= 0 or pmf is None:
      why = "model.packing_overflow is 0" if overflow <= 0 else missing
      lines.append(f"model.{field} = {fixed:g} (fixed: {why})")
      continue
    each = overflow / (len(jobs) * data_devices)
    m[field] = fraction(pmf, units, positions, each)
    lines.append(f"model.{field} = {m[field]:.4f} (was {fixed:g}): a device's {units} images "
                 f"exceed it with probability <= {each:.2g}, from the training data")
  return lines
