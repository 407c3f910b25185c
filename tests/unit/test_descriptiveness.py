"""Tests for ditm_jax.descriptiveness: brute force, hand values, real text."""
import csv
import json
import math
import re

import numpy as np
import pytest
from sklearn.feature_extraction import text as sk_text

from ditm_jax import descriptiveness

CORPUS = [
    "A man riding a horse on a beach.",
    "A man rides a brown horse along the sandy beach at sunset.",
    "Two dogs play with a red frisbee in the park.",
    "A dog in the park.",
    "The the THE is it on",  # Stop words only: c = 0.
    "Café owner's 2 cats sleep; cats_sleep on a sofa!",
    "A man on a street.",
    "An old man in a blue coat walks down a busy street in the rain.",
    "A horse.",
    "dog dog dog dog",
    "A plate of food with broccoli, rice and chicken.",
    "A plate of food.",
]
QUERIES = [
    "A man.",
    "A zebra grazing near a giraffe",  # Unseen words only: c = 0.
    "A man with a horse and a zebra",
    "dog dog dog dog dog dog dog dog dog dog",  # Above every training c.
    "cats sleep on the sofa in the cafe",
    "broccoli",
]


def brute_force(train, queries, stop_words="english", normalize="quantile"):
  """DESIGN §2 by hand: regex tokens, df/idf by formula, CDF by hand."""
  stop = sk_text.ENGLISH_STOP_WORDS if stop_words == "english" else set()

  def tokens(caption):
    return [w for w in re.findall(r"\b\w\w+\b", caption.lower())
            if w not in stop]

  n = len(train)
  df = {}
  for caption in train:
    for w in set(tokens(caption)):
      df[w] = df.get(w, 0) + 1
  idf = {w: math.log((1 + n) / (1 + k)) + 1 for w, k in df.items()}

  def c(caption):
    return sum(idf.get(w, 0.0) for w in tokens(caption))  # count * idf

  train_c = [c(t) for t in train]
  knots = [(0.0, 0.0)]
  for u in sorted(set(x for x in train_c if x > 0)):
    knots.append((u, sum(x <= u for x in train_c) / n))

  def cdf(x):
    if x >= knots[-1][0]:
      return 1.0
    for (x0, f0), (x1, f1) in zip(knots, knots[1:]):
      if x0 <= x <= x1:
        return f0 + (f1 - f0) * (x - x0) / (x1 - x0)
    raise AssertionError(x)

  lo, hi = min(train_c), max(train_c)
  scores = []
  for caption in queries:
    if normalize == "quantile":
      scores.append(cdf(c(caption)))
    else:
      scores.append(min(max((c(caption) - lo) / (hi - lo), 0.0), 1.0))
  return np.array(scores), idf


@pytest.mark.parametrize("stop_words", ["english", None])
@pytest.mark.parametrize("normalize", ["quantile", "minmax"])
def test_matches_brute_force(stop_words, normalize):
  desc = descriptiveness.fit(CORPUS, stop_words=stop_words,
                             normalize=normalize)
  for captions in (CORPUS, QUERIES):
    expected, idf = brute_force(CORPUS, captions, stop_words, normalize)
    got = desc.score(captions)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)
  assert desc.words == sorted(idf)
  np.testing.assert_allclose(desc.idf, [idf[w] for w in desc.words])


def test_three_caption_corpus_by_hand():
  # Tokens: {dog}, {black, dog}, {black, dog, grass} ("a", "on" are stop words).
  # idf: dog ln(4/4)+1 = 1, black ln(4/3)+1 = 1.2876821, grass ln(4/2)+1
  # = 1.6931472, so c = 1, 2.2876821, 3.9808293 and F = 1/3, 2/3, 1 there.
  desc = descriptiveness.fit(
      ["a dog", "a black dog", "a black dog on grass"])
  np.testing.assert_allclose(desc.idf, [1.2876821, 1.0, 1.6931472], rtol=1e-7)
  np.testing.assert_allclose(
      desc.score(["a dog", "a black dog", "a black dog on grass"]),
      [1 / 3, 2 / 3, 1.0], rtol=1e-6)
  # "grass": c = 1.6931472, between knots 1 and 2.2876821:
  # 1/3 + (0.6931472 / 1.2876821) / 3 = 0.3333333 + 0.1794302 = 0.5127635.
  # "black": c = 1.2876821 -> 1/3 + 0.2876821 / 1.2876821 / 3 = 0.4078036.
  # "a cat": unseen -> 0; "dog dog dog dog": c = 4 > max -> 1.
  np.testing.assert_allclose(
      desc.score(["grass", "black", "a cat", "dog dog dog dog"]),
      [0.5127635, 0.4078036, 0.0, 1.0], rtol=1e-6)
  # minmax: "grass" -> (1.6931472 - 1) / (3.9808293 - 1) = 0.2325350.
  minmax = descriptiveness.fit(["a dog", "a black dog", "a black dog on grass"],
                               normalize="minmax")
  np.testing.assert_allclose(minmax.score(["grass", "a cat", "dog " * 9]),
                             [0.2325350, 0.0, 1.0], rtol=1e-6)


def test_plainer_than_training_keeps_order():
  # idf: bus 1, road ln(10/7) + 1; the plainest training caption is "bus road"
  # (F = 3/9). Plainer texts fall on the line from F(0) = 0 to it.
  train = ["red bus parked street", "green bus parked road", "bus road"] * 3
  desc = descriptiveness.fit(train)
  c = desc.cumulative_tfidf(["bus", "road", "bus road"])
  d = desc.score(["bus", "road", "bus road"])
  assert c[0] < c[1] < c[2] == desc.knots_c[1]
  assert 0 < d[0] < d[1] < d[2] == pytest.approx(1 / 3)
  np.testing.assert_allclose(d[:2], c[:2] / c[2] / 3, rtol=1e-6)  # On the line.


def test_adding_a_rare_word_raises_the_score():
  desc = descriptiveness.fit(CORPUS)
  base = "A man riding a horse"
  rarer = [base + " near " + w for w in ("sunset", "broccoli", "frisbee")]
  d = desc.score([base] + rarer)
  assert np.all(d[1:] > d[0])
  assert desc.score([base + " on a beach with a dog"])[0] > d[0]


def test_unseen_words_are_ignored():
  desc = descriptiveness.fit(CORPUS)
  d = desc.score(["A man riding a horse", "A man riding a zebra horse",
                  "xylophone quokka man riding horse"])
  assert d[0] == d[1] == d[2]
  assert desc.score(["quokka xylophone"])[0] == 0.0


def test_scores_in_unit_interval_and_fit_score_consistent():
  captions = CORPUS + QUERIES
  desc, d = descriptiveness.fit_score(CORPUS)
  np.testing.assert_array_equal(d, desc.score(CORPUS))
  for normalize in descriptiveness.NORMALIZATIONS:
    s = descriptiveness.fit(CORPUS, normalize=normalize).score(captions)
    assert s.dtype == np.float32 and s.shape == (len(captions),)
    assert np.all((s >= 0) & (s <= 1))
  assert d.min() == 0.0 and d.max() == 1.0  # Stop-word caption; the longest.


def test_tokens_match_scikit_learn():
  tricky = ["Ünïcode naïve CAFÉ façade x y z 42 4 x2 snake_case it's",
            "ditmcaptionbreak appears as a word here", "tab\tand\nnewline",
            "hyphen-ated e-mail U.S.A. 3.14 ½ ٣٤ 北京 北"]
  corpus = CORPUS + tricky
  for stop_words in ("english", None):
    desc = descriptiveness.fit(corpus, stop_words=stop_words)
    ref = sk_text.TfidfVectorizer(stop_words=stop_words, norm=None)
    tfidf = ref.fit_transform(corpus)
    assert desc.words == ref.get_feature_names_out().tolist()
    np.testing.assert_allclose(desc.idf, ref.idf_, rtol=1e-12)
    np.testing.assert_allclose(desc.cumulative_tfidf(corpus),
                               np.asarray(tfidf.sum(axis=1)).ravel(),
                               rtol=1e-12)


def test_chunking_and_break_word(monkeypatch):
  captions = CORPUS + ["the ditmcaptionbreak word", "a plain dog"] + CORPUS
  whole, d_whole = descriptiveness.fit_score(captions)
  assert "ditmcaptionbreak" in whole.words
  monkeypatch.setattr(descriptiveness, "_CHUNK", 3)
  chunked, d_chunked = descriptiveness.fit_score(captions)
  assert chunked.words == whole.words
  np.testing.assert_array_equal(chunked.idf, whole.idf)
  np.testing.assert_array_equal(d_chunked, d_whole)
  np.testing.assert_array_equal(chunked.score(QUERIES), whole.score(QUERIES))


@pytest.mark.parametrize("normalize", ["quantile", "minmax"])
def test_json_round_trip(normalize):
  desc = descriptiveness.fit(CORPUS, normalize=normalize)
  state = json.loads(json.dumps(desc.to_dict()))
  back = descriptiveness.Descriptiveness.from_dict(state)
  assert back.normalize == normalize and back.stop_words == "english"
  np.testing.assert_array_equal(back.score(CORPUS + QUERIES),
                                desc.score(CORPUS + QUERIES))
  custom = descriptiveness.fit(CORPUS, stop_words=["man", "a", "dog"])
  back = descriptiveness.Descriptiveness.from_dict(
      json.loads(json.dumps(custom.to_dict())))
  assert back.stop_words == ["a", "dog", "man"]
  assert back.score(["a man", "dog"])[0] == 0.0


@pytest.mark.parametrize("captions, message", [
    ([], "empty"),
    (["   ", "\t\n"], "caption 0 is empty or whitespace-only"),
    (["a dog", ""], "caption 1 is empty or whitespace-only"),
    (["the", "it is"], "outside the stop words"),
])
def test_bad_captions_raise(captions, message):
  with pytest.raises(ValueError, match=message):
    descriptiveness.fit(captions)


def test_bad_arguments_raise():
  desc = descriptiveness.fit(CORPUS)
  with pytest.raises(ValueError, match="caption 1 is empty"):
    desc.score(["a dog", "  "])
  with pytest.raises(TypeError, match="one string"):
    desc.score("a dog")
  with pytest.raises(TypeError, match="caption 0 is int"):
    desc.score([3])
  with pytest.raises(ValueError, match="normalize"):
    descriptiveness.fit(CORPUS, normalize="rank")
  with pytest.raises(ValueError, match="stop_words"):
    descriptiveness.fit(CORPUS, stop_words="french")
  with pytest.raises(ValueError, match="format"):
    descriptiveness.Descriptiveness.from_dict({"idf": {}})


def kendall_tau_b(x, y):
  """Kendall's tau-b (ties in either argument corrected) per row of (M, n)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  i, j = np.triu_indices(x.shape[-1], k=1)
  sx, sy = np.sign(x[..., j] - x[..., i]), np.sign(y[..., j] - y[..., i])
  concordance = np.sum(sx * sy, axis=-1)  # concordant - discordant
  return concordance / np.sqrt(np.sum(sx != 0, -1) * np.sum(sy != 0, -1))


def test_kendall_tau_b_reference_values():
  # 5 concordant, 1 discordant pair -> 4/6; 5 concordant, 1 tie in y ->
  # 5 / sqrt(6 * 5).
  np.testing.assert_allclose(
      kendall_tau_b([[0, 1, 2, 3], [0, 1, 2, 3]],
                    [[0.1, 0.3, 0.2, 0.4], [0.1, 0.2, 0.2, 0.4]]),
      [4 / 6, 5 / math.sqrt(6 * 5)])


def test_hierarcaps_sanity_figure(shared_data):
  """DESIGN §2: fit on COCO 5K test; Kendall tau-b with HierarCaps levels."""
  coco = (shared_data / "coco" / "testall_caps.txt").read_text().splitlines()
  assert len(coco) == 25_000
  with open(shared_data / "hierarcaps" / "hierarcaps_test.csv") as f:
    chains = [row["captions"].split(" => ") for row in csv.DictReader(f)]
  assert len(chains) == 1000 and {len(c) for c in chains} == {4}
  desc = descriptiveness.fit(coco)
  d = desc.score([c for chain in chains for c in chain]).reshape(-1, 4)
  tau = kendall_tau_b(np.broadcast_to(np.arange(4), d.shape), d)
  assert not np.any(np.isnan(tau))
  print(f"HierarCaps mean Kendall tau-b: {tau.mean():.4f}")
  assert tau.mean() >= 0.80
  assert tau.mean() == pytest.approx(0.8421, abs=5e-4)  # Value at writing.
