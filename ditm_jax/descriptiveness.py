"""Caption descriptiveness from cumulative TF-IDF (DESIGN §2).

Fitted once on the training captions (one document per caption), then every
caption gets a score `d(t) in [0, 1]`:

  idf(w) = ln((1 + N) / (1 + df(w))) + 1           # smooth idf
  c(t)   = sum_w count(w, t) * idf(w)               # no length normalisation
  d(t)   = F(c(t))                                  # 'quantile'
         = clip((c(t) - c_min) / (c_max - c_min))   # 'minmax'

F is the empirical CDF of `c` over the training captions, linearly interpolated
between its knots and anchored at F(0) = 0. Words unseen in training add 0.
Tokens are scikit-learn's (`CountVectorizer` defaults: lowercase, words of two
or more word characters); English stop words are dropped by default.

Usage:
  desc = descriptiveness.fit(train_captions)
  d = desc.score(test_captions)             # float32, in [0, 1]
  manifest['descriptiveness'] = desc.to_dict()
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
import itertools
import re
from typing import Any

import numpy as np
from sklearn.feature_extraction import text as sk_text

TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # scikit-learn's default token pattern.
NORMALIZATIONS = ("quantile", "minmax")
_FORMAT = "ditm_jax.descriptiveness/1"
_TOKEN = re.compile(TOKEN_PATTERN)
_BREAK = "ditmcaptionbreak"  # Joins captions so one regex pass tokenises many.
_BREAK_ID = -2
_CHUNK = 1 << 16  # Captions per regex pass (bounds the token lists' memory).

StopWords = str | Sequence[str] | None


def _as_captions(captions: Iterable[str], what: str) -> list[str]:
  """Returns the captions as a list; raises on empty input or blank captions."""
  if isinstance(captions, str):
    raise TypeError(f"{what}: expected a sequence of captions, got one string")
  captions = list(captions)
  if not captions:
    raise ValueError(f"{what}: the caption list is empty")
  try:
    if all(map(str.strip, captions)):  # The common case, at C speed.
      return captions
  except TypeError:
    pass
  for i, caption in enumerate(captions):
    if not isinstance(caption, str):
      raise TypeError(
          f"{what}: caption {i} is {type(caption).__name__}, expected str")
    if not caption.strip():
      raise ValueError(
          f"{what}: caption {i} is empty or whitespace-only ({caption!r}); "
          "remove it or fix the caption file")
  return captions


def _check_settings(stop_words: StopWords, normalize: str) -> StopWords:
  """Validates the settings; returns stop_words as 'english', None or a list."""
  if normalize not in NORMALIZATIONS:
    raise ValueError(
        f"normalize={normalize!r}; expected one of {NORMALIZATIONS}")
  if isinstance(stop_words, str):
    if stop_words != "english":
      raise ValueError(
          f"stop_words={stop_words!r}; expected 'english', None or a list")
    return stop_words
  if stop_words is None:
    return None
  return sorted(set(stop_words))


def _stop_set(stop_words: StopWords) -> frozenset[str]:
  if stop_words == "english":
    return sk_text.ENGLISH_STOP_WORDS
  return frozenset(stop_words or ())


def _occurrences(captions: list[str], index: dict[str, int],
                 grow: bool) -> tuple[np.ndarray, np.ndarray]:
  """Every token of `captions` as (caption row, word id), int64 arrays.

  Words missing from `index` are dropped, or added to it when `grow`.
  """
  rows, ids = [], []
  for start in range(0, len(captions), _CHUNK):
    chunk = captions[start:start + _CHUNK]
    chunk_rows, chunk_ids = _occurrences_joined(chunk, index, grow)
    if chunk_rows is None:  # A caption holds the break word itself.
      chunk_rows, chunk_ids = _occurrences_each(chunk, index, grow)
    keep = chunk_ids >= 0
    rows.append(chunk_rows[keep] + start)
    ids.append(chunk_ids[keep])
  return np.concatenate(rows), np.concatenate(ids)


def _occurrences_joined(chunk, index, grow):
  """One regex pass over the captions joined by a break word."""
  tokens = _TOKEN.findall(f" {_BREAK} ".join(chunk).lower())
  if grow:
    for word in dict.fromkeys(tokens):
      if word not in index and word != _BREAK:
        index[word] = len(index)
  lookup = dict(index)
  lookup[_BREAK] = _BREAK_ID
  ids = np.fromiter(map(lookup.get, tokens, itertools.repeat(-1)), np.int64,
                    len(tokens))
  breaks = ids == _BREAK_ID
  if np.count_nonzero(breaks) != len(chunk) - 1:
    return None, None
  return np.cumsum(breaks), ids


def _occurrences_each(chunk, index, grow):
  """One regex pass per caption (the slow, general path)."""
  tokens = [_TOKEN.findall(caption.lower()) for caption in chunk]
  flat = list(itertools.chain.from_iterable(tokens))
  if grow:
    for word in dict.fromkeys(flat):
      index.setdefault(word, len(index))
  ids = np.fromiter(map(index.get, flat, itertools.repeat(-1)), np.int64,
                    len(flat))
  rows = np.repeat(np.arange(len(chunk)), [len(t) for t in tokens])
  return rows, ids


class Descriptiveness:
  """A fitted descriptiveness scorer: training idf plus the CDF of `c`.

  Attributes:
    words: the training vocabulary (stop words excluded), sorted.
    idf: float64 (V,), idf of each word in `words`.
    knots_c: float64, the knots of F: 0, then the distinct positive `c` of
      the training captions, increasing.
    knots_f: float64, F at each knot: 0, then the fraction of training
      captions with `c <= knot`.
    c_min, c_max: range of `c` over the training captions ('minmax').
    stop_words, normalize, num_captions: the fit settings.
  """

  def __init__(self, *, words, idf, knots_c, knots_f, c_min, c_max,
               stop_words: StopWords, normalize: str, num_captions: int):
    self.stop_words = _check_settings(stop_words, normalize)
    self.normalize = normalize
    self.num_captions = int(num_captions)
    self.words = list(words)
    self.idf = np.asarray(idf, np.float64)
    self.knots_c = np.asarray(knots_c, np.float64)
    self.knots_f = np.asarray(knots_f, np.float64)
    self.c_min = float(c_min)
    self.c_max = float(c_max)
    if len(self.words) != self.idf.shape[0]:
      raise ValueError(
          f"{len(self.words)} words but {self.idf.shape[0]} idf values")
    if (self.knots_c.ndim != 1 or self.knots_c.shape != self.knots_f.shape
        or self.knots_c.size < 2 or self.knots_c[0] != 0
        or np.any(np.diff(self.knots_c) <= 0)
        or np.any(np.diff(self.knots_f) < 0)):
      raise ValueError("CDF knots must be two equally long increasing arrays "
                       "from (0, 0)")
    self._index = {word: i for i, word in enumerate(self.words)}

  def __repr__(self):
    return (f"Descriptiveness(normalize={self.normalize!r}, "
            f"vocabulary={len(self.words)}, num_captions={self.num_captions})")

  def cumulative_tfidf(self, captions: Iterable[str]) -> np.ndarray:
    """c(t) = sum_w count(w, t) idf(w), float64 (N,); unseen words add 0."""
    captions = _as_captions(captions, "Descriptiveness.cumulative_tfidf")
    rows, ids = _occurrences(captions, self._index, grow=False)
    return np.bincount(rows, weights=self.idf[ids], minlength=len(captions))

  def normalize_c(self, c: np.ndarray) -> np.ndarray:
    """Maps cumulative TF-IDF values `c` to d in [0, 1], float32."""
    c = np.asarray(c, np.float64)
    if self.normalize == "quantile":
      d = np.interp(c, self.knots_c, self.knots_f, left=0.0, right=1.0)  # F(c)
    else:
      span = max(self.c_max - self.c_min, np.finfo(np.float64).tiny)
      d = np.clip((c - self.c_min) / span, 0.0, 1.0)
    return d.astype(np.float32)

  def score(self, captions: Iterable[str]) -> np.ndarray:
    """d(t) of each caption, float32 (N,) in [0, 1]."""
    return self.normalize_c(self.cumulative_tfidf(captions))

  def to_dict(self) -> dict[str, Any]:
    """JSON-able state (words -> idf, CDF knots, settings); see from_dict."""
    return {
        "format": _FORMAT,
        "normalize": self.normalize,
        "stop_words": self.stop_words,
        "token_pattern": TOKEN_PATTERN,
        "lowercase": True,
        "num_captions": self.num_captions,
        "idf": dict(zip(self.words, self.idf.tolist())),
        "knots_c": self.knots_c.tolist(),
        "knots_f": self.knots_f.tolist(),
        "c_min": self.c_min,
        "c_max": self.c_max,
    }

  @classmethod
  def from_dict(cls, state: dict[str, Any]) -> Descriptiveness:
    """Rebuilds the scorer written by to_dict (e.g. after a JSON round trip)."""
    if state.get("format") != _FORMAT:
      raise ValueError(f"not a descriptiveness state: format="
                       f"{state.get('format')!r}, expected {_FORMAT!r}")
    if (state.get("token_pattern") != TOKEN_PATTERN
        or state.get("lowercase") is not True):
      raise ValueError("this descriptiveness state was fitted with another "
                       f"tokenizer ({state.get('token_pattern')!r}); refit it")
    words = sorted(state["idf"])
    return cls(
        words=words, idf=[state["idf"][w] for w in words],
        knots_c=state["knots_c"], knots_f=state["knots_f"],
        c_min=state["c_min"], c_max=state["c_max"],
        stop_words=state["stop_words"], normalize=state["normalize"],
        num_captions=state["num_captions"])


def fit_score(
    captions: Iterable[str], stop_words: StopWords = "english",
    normalize: str = "quantile") -> tuple[Descriptiveness, np.ndarray]:
  """Fits on the training captions and scores them, tokenising once.

  Args: as for `fit`.

  Returns:
    (the fitted Descriptiveness, float32 (N,) scores of `captions`); the
    scores equal `fitted.score(captions)`.
  """
  stop_words = _check_settings(stop_words, normalize)
  captions = _as_captions(captions, "descriptiveness.fit")
  n = len(captions)
  index = {}
  rows, ids = _occurrences(captions, index, grow=True)

  # Drop stop words, renumber the rest in sorted order (as scikit-learn does).
  stop = _stop_set(stop_words)
  words = sorted(w for w in index if w not in stop)
  if not words:
    raise ValueError(
        f"descriptiveness.fit: none of the {n} captions has a word of two or "
        "more letters outside the stop words")
  new_id = np.full(len(index), -1, np.int64)
  new_id[[index[w] for w in words]] = np.arange(len(words))
  ids = new_id[ids]
  keep = ids >= 0
  rows, ids = rows[keep], ids[keep]

  v = len(words)
  pairs = np.sort(rows * v + ids)  # (caption, word) occurrences
  first = np.concatenate([[True], pairs[1:] != pairs[:-1]])
  df = np.bincount(pairs[first] % v, minlength=v)  # df(w)
  idf = np.log((1.0 + n) / (1.0 + df)) + 1.0  # smooth idf
  c = np.bincount(rows, weights=idf[ids], minlength=n)  # c(t)
  values, multiplicity = np.unique(c, return_counts=True)
  cdf = np.cumsum(multiplicity) / n  # F at each distinct c
  positive = values > 0
  fitted = Descriptiveness(
      words=words, idf=idf,
      knots_c=np.concatenate([[0.0], values[positive]]),  # F(0) = 0
      knots_f=np.concatenate([[0.0], cdf[positive]]),
      c_min=c.min(), c_max=c.max(), stop_words=stop_words,
      normalize=normalize, num_captions=n)
  return fitted, fitted.normalize_c(c)


def fit(captions: Iterable[str], stop_words: StopWords = "english",
        normalize: str = "quantile") -> Descriptiveness:
  """Fits descriptiveness on the training captions (one document each).

  Args:
    captions: the training captions; none may be empty.
    stop_words: 'english' (scikit-learn's list), None, or a list of words.
    normalize: 'quantile' (empirical CDF of c, F(0) = 0) or 'minmax'.

  Returns:
    The fitted Descriptiveness; `.score(captions)` gives d in [0, 1].
  """
  return fit_score(captions, stop_words=stop_words, normalize=normalize)[0]
