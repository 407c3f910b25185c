"""BERT import checked against transformers' PyTorch BertModel (tests/golden/make_golden.py)."""
import dataclasses
import json
import math
import pathlib
import shutil

import huggingface_hub
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ditm_jax import hub
from ditm_jax.data import tokenizer
from ditm_jax.models import bert
from ditm_jax.models import transformer

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "golden"
BERT_DIR = GOLDEN / "bert_tiny"


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(GOLDEN / "bert_tiny_io.npz"))


@pytest.fixture(scope="module")
def loaded():
  return bert.load_pretrained(BERT_DIR)


@pytest.fixture(scope="module")
def state_dict():
  return load_file(BERT_DIR / "model.safetensors")


def _encode(module, params, *args, **kwargs):
  apply = jax.jit(module.apply, static_argnames="deterministic")
  return apply({"params": params}, *args, **kwargs)


def _copy_checkpoint(tmp_path, tensors):
  directory = tmp_path / "ckpt"
  directory.mkdir()
  shutil.copy(BERT_DIR / "config.json", directory)
  save_file(tensors, directory / "model.safetensors")
  return directory


def test_matches_transformers_at_every_position(loaded, golden):
  module, params = loaded
  out = _encode(module, params, golden["input_ids"], golden["attention_mask"])
  want = golden["last_hidden_state"]
  assert out.shape == want.shape and out.dtype == jnp.float32
  diff = np.abs(np.asarray(out) - want)
  valid = golden["attention_mask"].astype(bool)
  assert (~valid).any()  # The golden batch has padded positions, and they match too.
  assert diff[valid].max() <= 1e-5
  assert diff[~valid].max() <= 1e-5


def test_token_type_ids_match_transformers(loaded, golden):
  module, params = loaded
  out = _encode(module, params, golden["input_ids"], golden["attention_mask"],
                     golden["token_type_ids"])
  np.testing.assert_allclose(out, golden["last_hidden_state_token_types"], atol=1e-5, rtol=0)
  assert np.abs(golden["last_hidden_state_token_types"] - golden["last_hidden_state"]).max() > 1e-2


def test_padding_does_not_change_valid_tokens(loaded, golden):
  module, params = loaded
  row = int(np.argmin(golden["attention_mask"].sum(1)))  # The most padded sentence.
  n = int(golden["attention_mask"][row].sum())
  short = _encode(module, params, golden["input_ids"][row:row + 1, :n],
                       golden["attention_mask"][row:row + 1, :n])
  np.testing.assert_allclose(short[0], golden["last_hidden_state"][row, :n], atol=1e-5, rtol=0)


def test_report_lists_unused_pooler(state_dict, caplog):
  config = bert.BertConfig.from_dict(json.loads((BERT_DIR / "config.json").read_text()))
  _, report = bert.convert_params(state_dict, config)
  assert report.unused == ("pooler.dense.bias", "pooler.dense.weight")
  assert len(report.loaded) == len(state_dict) - 2
  with caplog.at_level("WARNING"):
    bert.load_pretrained(BERT_DIR)
  assert "unused: pooler.* (2)" in caplog.text


def test_prefixed_gamma_beta_names_load_the_same(state_dict, loaded):
  """Task checkpoints prefix 'bert.'; old ones call LayerNorm weights gamma/beta; heads unused."""
  renamed = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma")
                        .replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in state_dict.items()}
  renamed["cls.predictions.bias"] = np.zeros(102, np.float32)
  config = bert.BertConfig.from_dict(json.loads((BERT_DIR / "config.json").read_text()))
  params, report = bert.convert_params(renamed, config)
  jax.tree.map(np.testing.assert_array_equal, params, loaded[1])
  assert report.unused == ("bert.pooler.dense.bias", "bert.pooler.dense.weight",
                           "cls.predictions.bias")
  assert report.unused_groups() == {"bert.pooler.*": 2, "cls.*": 1}


def test_missing_weight_raises_naming_it(state_dict, tmp_path):
  tensors = dict(state_dict)
  del tensors["encoder.layer.1.output.dense.weight"]
  with pytest.raises(hub.CheckpointError,
                     match=r"missing weight: encoder\.layer\.1\.output\.dense\.weight"):
    bert.load_pretrained(_copy_checkpoint(tmp_path, tensors))


def test_wrong_config_raises_shape_mismatch(state_dict):
  config = bert.BertConfig.from_dict(json.loads((BERT_DIR / "config.json").read_text()))
  with pytest.raises(hub.CheckpointError,
                     match=r"encoder\.layer\.0\.intermediate\.dense\.weight: checkpoint"):
    bert.convert_params(state_dict, dataclasses.replace(config, intermediate_size=48))


def test_bfloat16_compute_is_close(loaded, golden):
  _, params = loaded
  module = bert.load_pretrained(BERT_DIR, dtype=jnp.bfloat16)[0]
  out = _encode(module, params, golden["input_ids"], golden["attention_mask"])
  assert out.dtype == jnp.bfloat16
  assert jax.tree.leaves(params)[0].dtype == np.float32
  diff = np.abs(np.asarray(out, np.float32) - golden["last_hidden_state"])
  assert diff.mean() < 0.02 and diff.max() < 0.1, (diff.mean(), diff.max())


def test_dropout_only_in_training(loaded, golden):
  module, params = loaded
  args = (params, golden["input_ids"], golden["attention_mask"])
  train = _encode(module, *args, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert np.isfinite(train).all()
  assert np.abs(np.asarray(train) - golden["last_hidden_state"]).max() > 1e-2


def test_init_params_has_the_checkpoint_layout(loaded):
  config = bert.BertConfig(num_hidden_layers=4, hidden_size=256, num_attention_heads=4,
                           intermediate_size=1024)
  module, params = bert.init_params(config, jax.random.key(0))
  h, f, n = 256, 1024, 4
  per_layer = 4 * (h * h + h) + 2 * h * f + f + h + 4 * h
  embed = (30522 + 512 + 2) * h + 2 * h
  assert sum(x.size for x in jax.tree.leaves(params)) == embed + n * per_layer
  out = _encode(module, params, jnp.ones((2, 7), jnp.int32), jnp.ones((2, 7), jnp.int32))
  assert out.shape == (2, 7, 256) and np.isfinite(out).all()
  tiny = bert.BertConfig.from_dict(json.loads((BERT_DIR / "config.json").read_text()))
  _, tiny_params = bert.init_params(tiny, jax.random.key(0))
  assert jax.tree.structure(tiny_params) == jax.tree.structure(loaded[1])


def test_tokenizer_from_checkpoint_dir(golden):
  tok = tokenizer.load_tokenizer(BERT_DIR, max_length=12)
  encoded = tok(list(golden["texts"]))
  assert encoded["input_ids"].dtype == np.int32 and encoded["attention_mask"].dtype == np.int32
  assert encoded["input_ids"].shape == (len(golden["texts"]), 12)
  np.testing.assert_array_equal(encoded["input_ids"], golden["input_ids"])
  np.testing.assert_array_equal(encoded["attention_mask"], golden["attention_mask"])
  upper, lower = tok("A MAN RIDING"), tok("a man riding")  # do_lower_case in tokenizer_config.
  np.testing.assert_array_equal(upper["input_ids"], lower["input_ids"])
  assert (upper["input_ids"] != 1).all()  # No [UNK].
  long = tok(" ".join(["dog"] * 40))
  assert long["input_ids"].shape == (1, 12) and long["attention_mask"].all()


def test_hub_name_without_network_says_so(monkeypatch, tmp_path):
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
  with pytest.raises(hub.CheckpointError) as err:
    bert.load_pretrained("google-bert/bert-base-uncased")
  message = str(err.value)
  assert "google-bert/bert-base-uncased" in message and "no network" in message
  assert "local directory" in message


def test_hub_download_failure_is_a_clear_error(monkeypatch):
  def fail(*args, **kwargs):
    raise ConnectionError("Name or service not known")
  monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
  with pytest.raises(hub.CheckpointError, match=r"'some-org/some-bert'.*ConnectionError"):
    tokenizer.load_tokenizer("some-org/some-bert", max_length=8)


def test_bad_local_paths(tmp_path):
  with pytest.raises(hub.CheckpointError, match="is not a directory"):
    bert.load_pretrained(tmp_path / "nowhere")
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(hub.CheckpointError, match="No weights in"):
    bert.load_pretrained(tmp_path)
  (tmp_path / "pytorch_model.bin").write_bytes(b"")
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    with pytest.raises(hub.CheckpointError, match="PyTorch is not installed"):
      bert.load_pretrained(tmp_path)


def test_exact_gelu_is_the_erf_form_in_float64():
  x = np.linspace(-10, 10, 2001, dtype=np.float32)
  want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
  got = np.asarray(transformer.activation("gelu")(jnp.asarray(x)))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert got.dtype == np.float32
