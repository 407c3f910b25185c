"""Prepare and stream real-layout data in process: records, manifest, eval splits, resume."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from ditm_jax import descriptiveness
from ditm_jax.data import datasets
from ditm_jax.data import augment
from ditm_jax.data import eval_split
from ditm_jax.data import images
from ditm_jax.data import memory
from ditm_jax.data import stream
from ditm_jax.data import prepare
from ditm_jax.data import records
from ditm_jax.data import vocab as vocab_lib
from ditm_jax.data import packing_stats
from tests import conftest
from tests import real_data_util as rd

R, F = 6, 8  # small regions for speed; the layout is the real one
BERT = conftest.ROOT / "tests" / "golden" / "bert_tiny"


@pytest.fixture(scope="module")
def coco_captions():
  if not conftest.SHARED_DATA.is_dir():
    pytest.skip(f"{conftest.SHARED_DATA} not present (real annotation files live beside the "
                "checkout)")
  return rd.shared_captions(conftest.SHARED_DATA, "coco", "testall")


def _splits(caps, ids, sizes):
  out, start = {}, 0
  for name, n in zip(("train", "dev", "testall"), sizes):
    out[name] = (caps[5 * start:5 * (start + n)], ids[5 * start:5 * (start + n)])
    start += n
  return out


def _config(raw, out, arg="tiny", **data):
  return rd.config("coco", arg, raw_dir=str(raw), dir=str(out), num_regions=R, feature_dim=F,
                   **data)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, coco_captions):
  tmp = tmp_path_factory.mktemp("prep")
  splits = _splits(*coco_captions, (60, 10, 15))
  raw = rd.write_precomp(tmp / "raw", splits, num_regions=R, feature_dim=F,
                         one_row_per_caption=("dev",))
  config = _config(raw, tmp / "prepared")
  manifest = prepare.prepare(config)
  return raw, config, manifest, splits


def test_manifest_counts_shards_and_layouts(prepared):
  raw, config, manifest, _ = prepared
  out = config.data.dir
  assert not os.path.exists(out + ".incomplete")
  assert json.load(open(os.path.join(out, "manifest.json"))) == manifest
  train, dev = manifest["splits"]["train"], manifest["splits"]["dev"]
  assert (train["num_images"], train["num_captions"]) == (60, 300)
  assert train["shard_counts"] == [15, 15, 15, 15] and len(train["shards"]) == 4
  assert manifest["splits"]["testall"]["num_images"] == 15
  assert dev["num_images"] == 10 and "one feature row per caption" in dev["layout"]
  assert "five caption lines per feature row" in train["layout"]
  assert manifest["descriptiveness"]["fitted_on"] == "train"
  assert manifest["descriptiveness"]["num_captions"] == 300
  assert records.read_manifest(out, config)["settings_hash"] == manifest["settings_hash"]
  assert sorted(os.listdir(out)) == sorted(
      ["manifest.json", "descriptiveness.json", "dev-00000-of-00001.tfrecord",
       "testall-00000-of-00001.tfrecord"] + train["shards"])


def test_eval_splits_read_back_in_order_with_train_fitted_text(prepared):
  raw, config, _, splits = prepared
  data = datasets.load(config)
  train_caps = splits["train"][0]
  scorer = descriptiveness.fit(train_caps)
  vocab = vocab_lib.Vocab.build(train_caps)
  for name, rows in (("testall", slice(None)), ("dev", slice(None, None, 5))):
    split, (caps, ids) = data.splits[name], splits[name]
    np.testing.assert_array_equal(split.features, np.load(raw / f"{name}_ims.npy")[rows])
    assert split.captions == [c.strip() for c in caps]
    np.testing.assert_array_equal(split.image_ids, ids[::5])
    np.testing.assert_array_equal(split.desc, scorer.score(caps))  # train idf and CDF
    tokens, lengths = vocab.encode(caps, config.data.max_tokens)
    np.testing.assert_array_equal(split.tokens, tokens)
    np.testing.assert_array_equal(split.lengths, lengths)
  assert data.vocab_size == len(vocab)
  assert data.scorer.num_captions == len(train_caps)


def test_manifest_records_the_training_captions_token_counts(prepared):
  """What the trainer sizes its packing buffers from (packing_stats.derive), read back."""
  _, config, _, splits = prepared
  train = datasets.load(config).train
  _, lengths = vocab_lib.Vocab.build(splits["train"][0]).encode(splits["train"][0],
                                                                config.data.max_tokens)
  want = packing_stats.caption_sum_counts(lengths.reshape(-1, 5), config.data.max_tokens)
  assert train.caption_sum_counts(config.data.max_tokens) == want
  assert sum(want["2"]) == 60 * 10 and train.num_regions == R
  assert train.caption_sum_counts(config.data.max_tokens - 1) is None  # other lengths


def _stream(config, start=0, process=0, count=1):
  split = datasets.load(config).train
  return list(split.batches(config, start, process, count))


def test_stream_resumes_exactly_without_replay(prepared):
  _, config, _, _ = prepared
  config = config.copy_and_resolve_references()
  config.batch_size, config.total_steps, config.data.shuffle_window = 8, 16, 7
  full = _stream(config)
  assert len(full) == 16
  for start in (1, 5, 7, 8, 15):  # 60 images / 8 per step: epochs end inside steps 7 and 15
    resumed = _stream(config, start)
    assert len(resumed) == 16 - start
    for a, b in zip(full[start:], resumed):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"step {start} {key}")
  first_epoch = np.concatenate([b["image_ids"] for b in full[:7]])
  assert len(set(first_epoch)) == 56  # a permutation: no image twice within an epoch
  other_seed = config.copy_and_resolve_references()
  other_seed.seed = 1
  assert not np.array_equal(_stream(other_seed)[0]["image_ids"], full[0]["image_ids"])
  split = datasets.load(config).train
  for ds in (stream.record_dataset(split, config, 0),  # see tfdata.untuned
             eval_split.split_records(split.files, split.manifest, config)):
    assert ds.options().autotune.enabled is False


def test_hosts_read_disjoint_shards_and_batches_match_the_source(prepared):
  raw, config, _, splits = prepared
  config = config.copy_and_resolve_references()
  config.batch_size, config.total_steps = 8, 7
  config.data.token_drop, config.data.region_drop = 0.0, 0.0
  hosts = [_stream(config, 0, p, 2) for p in range(2)]
  seen = [np.concatenate([b["image_ids"] for b in h]) for h in hosts]
  assert all(len(s) == 28 for s in seen) and not set(seen[0]) & set(seen[1])
  features = np.load(raw / "train_ims.npy")
  ids = np.asarray(splits["train"][1][::5])
  vocab = vocab_lib.Vocab.build(splits["train"][0])
  tokens, lengths = vocab.encode(splits["train"][0], config.data.max_tokens)
  batch = hosts[1][3]
  assert batch["regions"].shape == (4, R, F) and batch["tokens"].shape == (8, 32)
  assert batch["region_mask"].all()
  for row, image_id in enumerate(batch["image_ids"]):
    i = int(np.flatnonzero(ids == image_id)[0])
    np.testing.assert_array_equal(batch["regions"][row], features[i])
    picked = []
    for n in (2 * row, 2 * row + 1):  # caption n belongs to image n // K
      match = [j for j in range(5 * i, 5 * i + 5)
               if np.array_equal(tokens[j], batch["tokens"][n])]
      assert match and batch["token_mask"][n].sum() == lengths[match[0]]
      picked.append(match[0])
    assert picked[0] != picked[1] or splits["train"][0][picked[0]] == splits["train"][0][
        picked[0] + 1]


def test_region_drop_and_token_drop_in_the_stream(prepared):
  _, config, _, _ = prepared
  config = config.copy_and_resolve_references()
  config.batch_size, config.total_steps = 32, 4
  batches = _stream(config)
  masks = np.concatenate([b["region_mask"] for b in batches])
  assert 0.74 < masks.mean() < 0.86 and masks.any(1).all()
  assert any((b["tokens"] == vocab_lib.UNK).any() for b in batches)


def _token_drop(tokens, lengths, rate, tokenizer, seed=(0, 1)):
  out, n = augment.token_drop(tf.constant(tokens), tf.constant(lengths), rate,
                               tf.constant(seed, tf.int64), tokenizer)
  return out.numpy(), n.numpy()


def test_token_drop_deletes_or_masks_a_fifth_and_keeps_order():
  words = {"pad_id": 0, "mask_id": 1, "keep_ends": False}
  tokens = np.tile(np.arange(2, 22), (3000, 1))
  lengths = np.full(3000, 20)
  same, n = _token_drop(tokens, lengths, 0.0, words)
  np.testing.assert_array_equal(same, tokens)
  out, n = _token_drop(tokens, lengths, 0.2, words)
  assert abs(1 - n.mean() / 20 - 0.1) < 0.01  # deleted: half of 20%
  valid = np.arange(20)[None] < n[:, None]
  masked = (out == 1) & valid
  assert abs(masked.sum() / tokens.size - 0.1) < 0.01  # masked: the other half
  assert (out[~valid] == 0).all()
  for row, k in zip(out[:50], n[:50]):  # survivors keep their order
    kept = row[:k][row[:k] != 1]
    assert (np.diff(kept) > 0).all()
  short, n = _token_drop(tokens[:, :3], np.full(3000, 3), 0.999, words)
  assert (n >= 1).all()  # never empty


def test_token_drop_spares_cls_and_sep():
  wordpiece = {"pad_id": 0, "mask_id": 4, "keep_ends": True}
  tokens = np.zeros((500, 12), np.int64)
  tokens[:, 0], tokens[:, 1:9], tokens[:, 9] = 2, 50, 3
  out, n = _token_drop(tokens, np.full(500, 10), 0.9, wordpiece)
  assert (out[:, 0] == 2).all() and (out[np.arange(500), n - 1] == 3).all()
  assert (n >= 3).all() and (n < 10).mean() > 0.9


def test_karpathy_json_with_images_gives_pixels(tmp_path, coco_captions):
  splits = ["train"] * 6 + ["restval"] * 2 + ["val"] * 2 + ["test"] * 2
  raw = rd.write_karpathy(tmp_path / "raw", coco_captions[0][:60], splits)
  data = json.loads((raw / "dataset_coco.json").read_text())
  data["images"][0]["sentences"].append({"raw": "a sixth caption that is dropped"})
  (raw / "dataset_coco.json").write_text(json.dumps(data))
  config = rd.config("coco", "img=pixels,tiny", raw_dir=str(raw), dir=str(tmp_path / "out"),
                     image_size=16)
  manifest = prepare.prepare(config)
  assert {k: v["num_images"] for k, v in manifest["splits"].items()} == {
      "train": 8, "dev": 2, "testall": 2}  # restval trains
  assert manifest["image"] == "pixels" and manifest["splits"]["train"]["num_captions"] == 40
  data = datasets.load(config)
  test = data.splits["testall"]
  assert test.features.shape == (2, 16, 16, 3) and test.features.dtype == np.uint8
  assert test.image_key == "pixels" and list(test.image_ids) == [1010, 1011]
  jpeg = (raw / "val2014" / "COCO_val2014_000000000010.jpg").read_bytes()
  np.testing.assert_array_equal(test.features[0], images.decode_images(
      tf.constant([jpeg]), 16).numpy()[0])
  assert memory.eval_arrays(test, 32)[0].keys() == {"pixels"}
  config.batch_size, config.total_steps = 4, 2
  batch = next(data.train.batches(config, 0))
  assert batch["pixels"].shape == (4, 16, 16, 3) and batch["pixels"].dtype == np.uint8
  assert "regions" not in batch
  assert "a sixth caption that is dropped" not in data.splits["train"].captions


def test_bert_tokens_and_settings_check(tmp_path, prepared):
  raw, _, _, splits = prepared
  config = _config(raw, tmp_path / "bert", "text=bert,tiny")
  config.model.bert_path = str(BERT)
  config.data.splits = "train,testall"
  manifest = prepare.prepare(config)
  assert manifest["tokenizer"]["kind"] == "bert" and manifest["tokenizer"]["mask_id"] == 4
  test = datasets.load(config).splits["testall"]
  n = test.lengths
  assert (test.tokens[:, 0] == 2).all() and (test.tokens[np.arange(len(n)), n - 1] == 3).all()
  config.data.max_tokens = 20
  with pytest.raises(ValueError, match="max_tokens: prepared 40, config 20"):
    records.read_manifest(config.data.dir, config)


def test_error_in_a_later_split_leaves_nothing(tmp_path, coco_captions):
  splits = _splits(*coco_captions, (10, 5, 5))
  raw = rd.write_precomp(tmp_path / "raw", splits, num_regions=R, feature_dim=F)
  features = np.load(raw / "testall_ims.npy")
  features[4, 2, 1] = np.inf
  np.save(raw / "testall_ims.npy", features)
  config = _config(raw, tmp_path / "out")
  with pytest.raises(ValueError, match=r"testall_ims.npy row 4 \(image 4\) has NaN or inf"):
    prepare.prepare(config)
  assert not os.path.exists(tmp_path / "out")
  assert not os.path.exists(str(tmp_path / "out") + ".incomplete")


def test_missing_ids_file_numbers_images(tmp_path, coco_captions):
  splits = _splits(*coco_captions, (10, 5, 5))
  raw = rd.write_precomp(tmp_path / "raw", splits, num_regions=R, feature_dim=F, ids=False)
  manifest = prepare.prepare(_config(raw, tmp_path / "out"))
  assert "image id = image index" in manifest["splits"]["dev"]["layout"]


def test_step_schedule():
  from ditm_jax import step as step_lib  # pylint: disable=g-import-not-at-top
  config = rd.config("coco", "tiny")
  schedule = step_lib.lr_schedule(config)
  assert [float(schedule(s)) for s in (0, 29, 30, 39)] == pytest.approx(
      [1e-3, 1e-3, 1e-4, 1e-4])
  config.optim.warmup_steps, config.optim.decay_steps = 10, (20, 30)
  schedule = step_lib.lr_schedule(config)
  assert [float(schedule(s)) for s in (5, 10, 19, 20, 30)] == pytest.approx(
      [5e-4, 1e-3, 1e-3, 1e-4, 1e-5])
  full = rd.config("coco", "")
  assert full.optim.decay_steps == (15 * 886,) and full.total_steps == 25 * 886


def test_f30k_config_prepares_its_splits(tmp_path):
  if not conftest.SHARED_DATA.is_dir():
    pytest.skip(f"{conftest.SHARED_DATA} not present")
  caps, ids = rd.shared_captions(conftest.SHARED_DATA, "f30k", "test")
  raw = rd.write_precomp(tmp_path / "raw", {
      "train": (caps[:100], ids[:100]), "dev": (caps[100:125], ids[100:125]),
      "test": (caps[125:150], ids[125:150])}, num_regions=R, feature_dim=F)
  config = rd.config("f30k", "tiny", raw_dir=str(raw), dir=str(tmp_path / "out"),
                     num_regions=R, feature_dim=F)
  manifest = prepare.prepare(config)
  assert list(manifest["splits"]) == ["train", "dev", "test"]
  assert list(config.evals) == ["test"] and rd.config("f30k", "").evals.test.split == "test"
  config.data.format, config.data.dir = "tfds", str(tmp_path / "out2")
  config.model.image = "vit"
  with pytest.raises(ValueError, match="COCO only"):
    prepare.prepare(config)


def test_pipeline_rate_reports_rows(prepared):
  from ditm_jax.bench import pipeline as throughput  # pylint: disable=g-import-not-at-top
  _, config, _, _ = prepared
  rate = throughput.pipeline_rate(config, num_batches=5, warmup=1)
  assert rate["rows_per_s"] == pytest.approx(32 * rate["batches_per_s"])
  assert rate["captions_per_s"] == pytest.approx(2 * rate["rows_per_s"])


def test_tfds_coco_captions_by_karpathy_split(tmp_path, monkeypatch, coco_captions):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  (tmp_path / "tfds" / "coco_captions").mkdir(parents=True)
  sizes = {"train+restval": (0, 6), "val": (6, 2), "test": (8, 2)}
  caps = coco_captions[0]

  def as_dataset(self, split, **kwargs):  # what the built data set holds, images as JPEG
    del self, kwargs
    start, n = sizes[split]
    texts = [caps[5 * i:5 * i + 5] + [f"a sixth caption {i}"] for i in range(start, start + n)]
    return tf.data.Dataset.from_tensor_slices({
        "image": [tf.io.encode_jpeg(tf.fill([10, 12, 3], tf.constant(i * 20, tf.uint8)))
                  for i in range(start, start + n)],
        "image/id": tf.range(500 + start, 500 + start + n, dtype=tf.int64),
        "captions": {"text": texts, "id": tf.zeros([n, 6], tf.int64)}})

  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  config = rd.config("coco", "img=pixels,tiny", raw_dir=str(tmp_path / "tfds"),
                     dir=str(tmp_path / "out"), format="tfds", image_size=8)
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    manifest = prepare.prepare(config)
  assert {k: v["num_images"] for k, v in manifest["splits"].items()} == {
      "train": 6, "dev": 2, "testall": 2}
  test = datasets.load(config).splits["testall"]
  assert list(test.image_ids) == [508, 509] and test.captions == caps[40:50]
  assert test.features.shape == (2, 8, 8, 3) and (test.features[1] == 180).all()


def test_one_row_per_caption_must_repeat_the_image(tmp_path, coco_captions):
  splits = _splits(*coco_captions, (10, 5, 5))
  raw = rd.write_precomp(tmp_path / "raw", splits, num_regions=R, feature_dim=F,
                         one_row_per_caption=("dev",))
  features = np.load(raw / "dev_ims.npy")
  features[3] += 1.0  # row 3 is no longer a copy of row 0
  np.save(raw / "dev_ims.npy", features)
  with pytest.raises(ValueError, match=r"dev_ims.npy: rows 0..4 differ"):
    prepare.prepare(_config(raw, tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")
