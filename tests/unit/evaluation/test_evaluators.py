"""Evaluator types of ditm_jax.evaluation.evaluators, through a fake embedder (no model)."""

import json
import types

import ml_collections
import numpy as np
import pytest

from ditm_jax import evaluate
from ditm_jax import metrics
from ditm_jax.data import demo
from ditm_jax.data import memory
from ditm_jax.evaluation import cxc
from ditm_jax.evaluation import evaluators
from ditm_jax.evaluation import export
from ditm_jax.evaluation import graded
from ditm_jax.evaluation import hierarcaps
from ditm_jax.evaluation import recall


def _split(image_ids, captions_per_image=5, captions=None, desc=None):
  n = len(image_ids)
  m = n * captions_per_image
  return memory.Split(
      features=np.zeros((n, 1, 1), np.float32), tokens=np.zeros((m, 1), np.int32),
      lengths=np.ones(m, np.int32),
      desc=np.zeros(m, np.float32) if desc is None else np.asarray(desc, np.float32),
      image_ids=np.asarray(image_ids, np.int64),
      captions=captions or [f"caption {k}" for k in range(m)],
      captions_per_image=captions_per_image)


class FakeEmbedder:
  """The embedder protocol of `evaluators` over fixed arrays."""

  def __init__(self, splits, images=None, captions=None, text_fn=None, relevance=None,
               workdir=None, step=7, config=None):
    self.data = types.SimpleNamespace(splits=splits, relevance=relevance or {}, scenes=None)
    self._images, self._captions, self._text_fn = images or {}, captions or {}, text_fn
    self.workdir, self.step, self.is_main = workdir, step, True
    self.config = config or ml_collections.ConfigDict({"eval_every_steps": 10})
    self.text_preprocessing = "fake words"
    self.memo_calls = []
    self._memo = {}

  def memo(self, key, fn):
    if key not in self._memo:
      self.memo_calls.append(key)
      self._memo[key] = fn()
    return self._memo[key]

  def split(self, name):
    if name not in self.data.splits:
      raise ValueError(f"no split {name}")
    return self.data.splits[name]

  def embed_images(self, name):
    return self._images[name]

  def embed_captions(self, name):
    return self._captions[name]

  def embed_texts(self, texts):
    return np.stack([self._text_fn(t) for t in texts]).astype(np.float32)


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _run(embedder, **spec):
  return evaluators.EVALUATORS[spec["type"]](embedder, spec)


def test_recall_oracle_is_maximal_and_matches_numpy():
  rng = np.random.default_rng(0)
  img = _unit(rng.standard_normal((50, 32)))
  txt = _unit(np.repeat(img, 5, axis=0) + 0.05 * rng.standard_normal((250, 32)))
  emb = FakeEmbedder({"test": _split(np.arange(50))}, {"test": img}, {"test": txt})
  for fold5 in (False, True):
    got = _run(emb, type="recall", split="test", fold5=fold5)
    assert got["rsum"] == 600.0 and got["i2t_medr"] == got["t2i_medr"] == 1.0, fold5
  noisy = _unit(rng.standard_normal((250, 32)))
  emb = FakeEmbedder({"test": _split(np.arange(50))}, {"test": img}, {"test": noisy})
  want = recall.i2t_t2i_numpy(img @ noisy.T)
  assert _run(emb, type="recall", split="test") == pytest.approx(want)
  folds = [recall.i2t_t2i_numpy(img[10 * f:10 * f + 10] @ noisy[50 * f:50 * f + 50].T)
           for f in range(5)]
  want = {k: np.mean([m[k] for m in folds]) for k in recall.METRIC_KEYS}
  assert _run(emb, type="recall", split="test", fold5=True) == pytest.approx(want)


def test_demo_oracle_and_wiring():
  split = demo.make_split(0, 3, 40, feature_dim=8)
  rel = demo.relevance(split)
  levels = split.levels.astype(np.float32)
  data_split = _split(split.image_ids, captions=split.captions, desc=levels)
  # img = identity, txt = relevance^T: the similarity matrix is the graded relevance itself.
  emb = FakeEmbedder({"test": data_split}, {"test": np.eye(40, dtype=np.float32)},
                     {"test": rel.T.astype(np.float32)}, relevance={"test": lambda: rel})
  got = _run(emb, type="demo", split="test")
  assert got["i2t_ndcg10"] == pytest.approx(1.0)
  assert got["t2i_ndcg10"] == pytest.approx(1.0)
  assert got["order_tau"] == pytest.approx(1.0)  # similarity order = level order
  assert got["grade_tau"] == pytest.approx(1.0)
  assert emb.memo_calls == [("relevance", "test")]
  rng = np.random.default_rng(1)
  img, txt = _unit(rng.standard_normal((40, 16))), _unit(rng.standard_normal((200, 16)))
  emb = FakeEmbedder({"test": data_split}, {"test": img}, {"test": txt},
                     relevance={"test": lambda: rel})
  got = _run(emb, type="demo", split="test")
  sims = img @ txt.T
  assert got == pytest.approx({**recall.i2t_t2i_numpy(sims),
                               "i2t_ndcg10": graded.ndcg_at_k(sims, rel),
                               "t2i_ndcg10": graded.ndcg_at_k(sims.T, rel.T),
                               "order_tau": graded.order_tau(sims, rel > 0, levels),
                               "grade_tau": graded.own_grade_tau(sims, rel, 5)})
  # `recall` adds the same graded metrics where the split carries graded truth (not fold5).
  assert _run(emb, type="recall", split="test") == pytest.approx(got)
  plain = FakeEmbedder({"test": data_split}, {"test": img}, {"test": txt})
  assert _run(plain, type="recall", split="test") == pytest.approx(recall.i2t_t2i_numpy(sims))
  with pytest.raises(ValueError, match="has no graded ground truth"):
    _run(FakeEmbedder({"test": data_split}), type="demo", split="test")


def _cxc_oracle_targets(p):
  """Per caption, an image it is a SITS positive of (its own where possible)."""
  target = np.arange(p.n_captions) // 5
  pairs = p.image_text
  own = pairs[:, 0] == pairs[:, 1] // 5
  has_own = np.zeros(p.n_captions, bool)
  has_own[pairs[own, 1]] = True
  other = pairs[~has_own[pairs[:, 1]]]
  target[other[:, 1]] = other[:, 0]
  return target


def test_cxc_evaluator_oracle_on_the_real_5k_order(shared_data):
  ids = np.loadtxt(shared_data / "coco" / "testall_ids.txt", dtype=np.int64)[::5]
  split = _split(ids)
  emb = FakeEmbedder({"coco_5k": split})
  positives = emb.memo(("cxc", str(shared_data)), lambda: cxc.load_positives(shared_data))
  img = _unit(np.random.default_rng(0).standard_normal((5000, 16)))
  txt = img[_cxc_oracle_targets(positives)]
  emb._images, emb._captions = {"coco_5k": img}, {"coco_5k": txt}
  got = _run(emb, type="cxc", split="coco_5k", data_dir=str(shared_data))
  for d in ("i2t", "t2i"):
    assert [got[f"{d}_r{k}"] for k in (1, 5, 10)] == [100.0] * 3, d
  assert got["sits_spearman"] > 0.5 and got["t2t_r10"] > 99.9
  emb.data.splits["shuffled"] = _split(ids[::-1])
  with pytest.raises(ValueError, match="match_ids=False"):
    _run(emb, type="cxc", split="shuffled", data_dir=str(shared_data))
  with pytest.raises(ValueError, match="data_dir"):
    _run(emb, type="cxc", split="coco_5k")


def _write_hierarcaps(folder, ids, chains):
  path = folder / "hierarcaps"
  path.mkdir(parents=True)
  rows = ["id,captions,image_url"] + [
      f'{n},"{" => ".join(c)}",http://x/COCO_val2014_{i:012d}.jpg'
      for n, (i, c) in enumerate(zip(ids, chains))]
  (path / "hierarcaps_test.csv").write_text("\n".join(rows) + "\n")


def test_hierarcaps_evaluator_oracle(tmp_path):
  n, dim = 12, 16
  ids = 1000 + 7 * np.arange(n)
  chains = [tuple(f"image {i} level {l}" for l in range(4)) for i in range(n)]
  _write_hierarcaps(tmp_path, ids, chains)
  rotation = np.linalg.qr(np.random.default_rng(0).standard_normal((dim, dim)))[0]
  basis = np.eye(dim)[:n + 1] @ rotation  # root, then one direction per image

  def text_fn(text):
    if not text:
      return basis[0]
    i, l = int(text.split()[1]), int(text.split()[3])
    theta = np.deg2rad(22.5 * (l + 1))  # level l at 22.5 (l + 1) degrees from the root
    return np.cos(theta) * basis[0] + np.sin(theta) * basis[i + 1]

  order = np.random.default_rng(1).permutation(n + 3)  # the split holds 3 other images too
  split_ids = np.concatenate([ids, [1, 2, 3]])[order]
  img = np.zeros((n + 3, dim), np.float32)
  img[order < n] = basis[1:][order[order < n]]
  img[order >= n] = basis[0]
  emb = FakeEmbedder({"hc": _split(split_ids)}, {"hc": img}, text_fn=text_fn)
  got = _run(emb, type="hierarcaps", split="hc", data_dir=str(tmp_path))
  assert got == pytest.approx({"precision": 1.0, "recall": 1.0, "d_corr": 1.0})
  emb.data.splits["demo"] = _split(ids[:-1])
  with pytest.raises(ValueError, match="optional=True"):
    _run(emb, type="hierarcaps", split="demo", data_dir=str(tmp_path))


def test_hierarcaps_evaluator_wiring_on_the_real_csv(shared_data):
  names, chains = hierarcaps.load_test(shared_data / "hierarcaps" / "hierarcaps_test.csv")
  ids = np.array([evaluators.coco_image_id(x) for x in names])
  order = np.random.default_rng(0).permutation(len(ids))
  img = _unit(np.random.default_rng(1).standard_normal((len(ids), 8)))

  rng, vectors = np.random.default_rng(2), {}
  text_fn = lambda text: vectors.setdefault(text, _unit(rng.standard_normal(8)))

  emb = FakeEmbedder({"hc": _split(ids[order])}, {"hc": img[order]}, text_fn=text_fn)
  got = _run(emb, type="hierarcaps", split="hc", data_dir=str(shared_data))
  pool, index = hierarcaps.build_pool(chains)
  pool_emb = np.stack([text_fn(t) for t in pool])
  want = hierarcaps.hierarcaps_metrics(img, pool_emb[index], text_fn(""), chains)
  assert got == pytest.approx(want)


def test_export_evaluator_writes_embeddings_and_sidecar(tmp_path):
  rng = np.random.default_rng(0)
  img, txt = _unit(rng.standard_normal((4, 6))), _unit(rng.standard_normal((8, 6)))
  config = ml_collections.ConfigDict({"eval_every_steps": 10, "model": {"text": "bigru"}})
  split = _split([10, 11, 12, 13], captions_per_image=2,
                 captions=[f"a caption\nof {k}" for k in range(8)])
  emb = FakeEmbedder({"test": split}, {"test": img}, {"test": txt}, workdir=str(tmp_path),
                     config=config)
  assert _run(emb, type="export", split="test") == {}
  out = export.load(str(tmp_path / "export"), "test")
  np.testing.assert_array_equal(out.images, img)
  np.testing.assert_array_equal(out.captions, txt)
  np.testing.assert_array_equal(out.caption_image_ids, [10, 10, 11, 11, 12, 12, 13, 13])
  assert out.texts[3] == "a caption of 3"
  assert out.meta["step"] == 7 and out.meta["text_preprocessing"] == "fake words"
  assert out.meta["captions_per_image"] == 2 and out.meta["embed_dim"] == 6
  # The hash is stable: the sidecar's config, read back, hashes to the recorded value.
  assert out.meta["config_hash"] == export.config_hash(config)
  assert export.config_hash(ml_collections.ConfigDict(out.meta["config"])) == \
      out.meta["config_hash"]
  config.eval_every_steps = 11
  assert export.config_hash(config) != out.meta["config_hash"]
  assert export.splits(str(tmp_path / "export")) == ["test"]
  (tmp_path / "export" / "test_captions.txt").write_text("short\n")
  with pytest.raises(ValueError, match="inconsistent"):
    export.load(str(tmp_path / "export"), "test")


def test_run_optional_failures_are_logged_and_the_run_goes_on(capsys):
  rng = np.random.default_rng(0)
  img = _unit(rng.standard_normal((5, 4)))
  emb = FakeEmbedder({"a": _split(np.arange(5))}, {"a": img}, {"a": np.repeat(img, 5, 0)})
  specs = {"broken": {"type": "cxc", "split": "a", "data_dir": "/nonexistent", "optional": True},
           "good": {"type": "recall", "split": "a"}}
  got = evaluators.run(specs, emb)
  assert set(got) == {f"good/{k}" for k in recall.METRIC_KEYS}
  assert got["good/rsum"] == 600.0
  assert "evaluation broken failed (optional" in capsys.readouterr().out
  specs["broken"]["optional"] = False
  with pytest.raises(FileNotFoundError):
    evaluators.run(specs, emb)


def test_specs_and_cadence():
  config = ml_collections.ConfigDict({"eval_every_steps": 10, "export_at_end": False, "evals": {
      "b": {"type": "recall", "split": "test"},
      "a": {"type": "export", "split": "test", "every_steps": 0},
      "c": {"type": "demo", "split": "test", "every_steps": 4}}})
  specs = evaluators.specs(config)
  assert list(specs) == ["a", "b", "c"]
  due = lambda step, final=False: [n for n, s in specs.items()
                                   if evaluators.is_due(s, config, step, final)]
  assert due(4) == ["c"] and due(10) == ["b"] and due(20) == ["b", "c"] and due(7) == []
  assert due(7, final=True) == ["a", "b", "c"]
  config.evals.b.type = "rcall"
  with pytest.raises(ValueError, match="'rcall' is not known; use one of"):
    evaluators.specs(config)
  del config.evals["b"]
  config.evals.d = {"type": "recall"}
  with pytest.raises(ValueError, match="config.evals.d has no 'split'"):
    evaluators.specs(config)


def test_table_groups_evaluations_by_their_columns():
  results = {"demo_test/i2t_r1": 1.25, "demo_test/rsum": 100.0, "demo_test/order_tau": 0.5,
             "coco_1k/i2t_r1": 70.0, "coco_1k/rsum": 500.0,
             "coco_5k/i2t_r1": 50.0, "coco_5k/rsum": 400.0, "coco_5k/i2t_medr": 2.0,
             "hc/precision": 0.25, "hc/recall": 0.5, "hc/d_corr": 0.75}
  text = metrics.table({"run": results})
  tables = text.split("\n\n")
  assert len(tables) == 3
  assert tables[0].splitlines()[0] == "| run | eval | i2t_r1 | rsum |"
  assert tables[0].splitlines()[2:] == ["| run | coco_1k | 70.0 | 500.0 |",
                                        "| run | coco_5k | 50.0 | 400.0 |"]
  assert "| run | demo_test | 1.2 | 100.0 | 0.500 |" in tables[1]
  assert tables[2].splitlines()[-1] == "| run | hc | 0.250 | 0.500 | 0.750 |"


def test_write_results(tmp_path):
  metrics.write_results(str(tmp_path), 12, {"t/rsum": 300.0, "t/i2t_r1": 50.0})
  assert json.loads((tmp_path / "eval_results.json").read_text()) == {
      "step": 12, "t/rsum": 300.0, "t/i2t_r1": 50.0}
  assert "| this run | t | 50.0 | 300.0 |" in (tmp_path / "eval_results.md").read_text()


def test_evaluator_selection_default_exports_and_optional_splits(capsys):
  config = ml_collections.ConfigDict({"eval_every_steps": 10, "export_at_end": False, "evals": {
      "coco_5k": {"type": "recall", "split": "testall"},
      "dev": {"type": "recall", "split": "dev"},
      "hc": {"type": "hierarcaps", "split": "hierarcaps", "optional": True, "data_dir": "x"}}})
  data = types.SimpleNamespace(splits={"testall": _split([1]), "dev": _split([2])})
  embedding = types.SimpleNamespace(config=config)
  evaluator = lambda which="all": evaluate.Evaluator(embedding, data, "unused", which=which)
  assert list(evaluator("metrics").specs) == ["coco_5k", "dev"]  # the optional one lacks its split
  assert "evaluation 'hc': split 'hierarcaps' is not in the data" in capsys.readouterr().out
  # No export listed: --mode=export exports every evaluated split; training exports none ...
  assert {n: s["split"] for n, s in evaluator("exports").specs.items()} == {
      "export_dev": "dev", "export_testall": "testall"}
  assert list(evaluator().specs) == ["coco_5k", "dev"]
  # ... unless the config asks for export_at_end (then at the last step only).
  config.export_at_end = True
  everything = evaluator()
  assert list(everything.due(10)) == ["coco_5k", "dev"]
  assert list(everything.due(13, final=True)) == ["coco_5k", "dev", "export_dev",
                                                  "export_testall"]
  config.evals.hc.optional = False
  with pytest.raises(ValueError, match="split 'hierarcaps' is not in the data"):
    evaluator()
