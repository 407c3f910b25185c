"""ViT import checked against transformers' PyTorch ViTModel (tests/golden/make_golden.py)."""
import dataclasses
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ditm_jax import hub
from ditm_jax.models import vit

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "golden"
VIT_DIR = GOLDEN / "vit_tiny"
IMAGES = ("COCO_val2014_000000000139.jpg", "COCO_val2014_000000000776.jpg",
          "COCO_val2014_000000007888.jpg")  # The last one is greyscale.


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(GOLDEN / "vit_tiny_io.npz"))


@pytest.fixture(scope="module")
def loaded():
  return vit.load_pretrained(VIT_DIR)


@pytest.fixture(scope="module")
def state_dict():
  return load_file(VIT_DIR / "model.safetensors")


def _encode(module, params, images, **kwargs):
  apply = jax.jit(module.apply, static_argnames="deterministic")
  return apply({"params": params}, images, **kwargs)


def _golden_input(golden, config):
  """The model input make_golden.py fed to PyTorch: (uint8 / 255 - mean) / std, NHWC."""
  return ((golden["pixels"].astype(np.float32) / np.float32(255) - np.float32(config.image_mean))
          / np.float32(config.image_std))


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Antialiased bilinear (triangle filter) weights, half-pixel centres, rows summing to 1."""
  scale = max(n_in / n_out, 1.0)  # The triangle widens when shrinking.
  centres = (np.arange(n_out) + 0.5) * n_in / n_out
  weights = np.maximum(0, 1 - np.abs(np.arange(n_in)[None] + 0.5 - centres[:, None]) / scale)
  return weights / weights.sum(1, keepdims=True)


def _reference_preprocess(image: np.ndarray, config) -> np.ndarray:
  image = np.broadcast_to(image.reshape(image.shape[:2] + (-1,)), image.shape[:2] + (3,))
  rows = _resize_matrix(image.shape[0], config.image_size)
  cols = _resize_matrix(image.shape[1], config.image_size)
  resized = np.einsum("ih,hwc,jw->ijc", rows, image.astype(np.float64), cols)
  mean, std = np.array(config.image_mean), np.array(config.image_std)
  return (resized * config.rescale_factor - mean) / std


def test_matches_transformers(loaded, golden):
  module, params = loaded
  out = _encode(module, params, _golden_input(golden, module.config))
  assert out.shape == golden["last_hidden_state"].shape == (2, 1 + 16, 32)
  assert np.abs(np.asarray(out) - golden["last_hidden_state"]).max() <= 1e-5


def test_config_reads_preprocessor_normalisation(loaded):
  config = loaded[0].config
  assert config.image_mean == (0.485, 0.456, 0.406) and config.image_std == (0.229, 0.224, 0.225)
  assert (config.image_size, config.patch_size, config.num_patches) == (32, 8, 16)
  plain = vit.ViTConfig.from_dict({"image_size": [32, 32], "patch_size": 8})
  assert plain.image_mean == plain.image_std == (0.5, 0.5, 0.5) and plain.image_size == 32


def test_report_lists_unused_pooler(state_dict, loaded):
  _, report = vit.convert_params(state_dict, loaded[0].config)
  assert report.unused == ("pooler.dense.bias", "pooler.dense.weight")


def test_prefixed_and_in_memory_names_load_the_same(state_dict, loaded):
  """'vit.'-prefixed on-disk names and transformers 5's in-memory names give the same params."""
  renames = (("encoder.layer.", "layers."), ("attention.attention.query", "attention.q_proj"),
             ("attention.attention.key", "attention.k_proj"),
             ("attention.attention.value", "attention.v_proj"),
             ("attention.output.dense", "attention.o_proj"),
             ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"))
  in_memory = {}
  for name, value in state_dict.items():
    for old, new in renames:
      name = name.replace(old, new)
    in_memory[name] = value
  assert "layers.1.mlp.fc2.weight" in in_memory
  prefixed = {"vit." + k: v for k, v in state_dict.items()}
  prefixed["classifier.weight"] = np.zeros((10, 32), np.float32)
  for tensors, unused in ((in_memory, 2), (prefixed, 3)):
    params, report = vit.convert_params(tensors, loaded[0].config)
    jax.tree.map(np.testing.assert_array_equal, params, loaded[1])
    assert len(report.unused) == unused


def test_missing_weight_raises_naming_it(state_dict, tmp_path):
  directory = tmp_path / "ckpt"
  directory.mkdir()
  shutil.copy(VIT_DIR / "config.json", directory)
  save_file({k: v for k, v in state_dict.items() if k != "embeddings.cls_token"},
            directory / "model.safetensors")
  with pytest.raises(hub.CheckpointError, match=r"missing weight: embeddings\.cls_token"):
    vit.load_pretrained(directory)


def test_conv_kernel_is_hwio(state_dict, loaded):
  torch_weight = state_dict["embeddings.patch_embeddings.projection.weight"]  # (O, I, H, W)
  kernel = loaded[1]["patch_embed"]["kernel"]
  assert kernel.shape == (8, 8, 3, 32)
  np.testing.assert_array_equal(kernel[2, 5, 1, 7], torch_weight[7, 1, 2, 5])


def test_bfloat16_and_wrong_size(loaded, golden):
  _, params = loaded
  config = loaded[0].config
  out = _encode(vit.ViTModel(config, dtype=jnp.bfloat16), params, _golden_input(golden, config))
  diff = np.abs(np.asarray(out, np.float32) - golden["last_hidden_state"])
  assert out.dtype == jnp.bfloat16 and diff.mean() < 0.02 and diff.max() < 0.1, (diff.mean(),
                                                                                 diff.max())
  with pytest.raises(ValueError, match="preprocess_images"):
    vit.ViTModel(config).apply({"params": params}, jnp.zeros((1, 48, 48, 3)))


def test_preprocess_matches_numpy_reference(loaded):
  config = dataclasses.replace(loaded[0].config, image_size=16)
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (37, 23, 3), dtype=np.uint8),  # Shrink, non-square.
            rng.integers(0, 256, (9, 12), dtype=np.uint8)]  # Grow, greyscale.
  out = np.asarray(vit.preprocess_images(images, config))
  assert out.shape == (2, 16, 16, 3) and out.dtype == np.float32
  for got, image in zip(out, images):
    np.testing.assert_allclose(got, _reference_preprocess(image, config), atol=1e-5, rtol=0)


def test_preprocess_agrees_with_pil_to_uint8_rounding(loaded):
  """Hugging Face's ViTImageProcessor resizes with PIL's bilinear filter, rounding to uint8."""
  image_module = pytest.importorskip("PIL.Image")
  config = loaded[0].config
  image = np.random.default_rng(1).integers(0, 256, (120, 90, 3), dtype=np.uint8)
  pil = np.asarray(image_module.fromarray(image).resize((32, 32), image_module.BILINEAR))
  ours = np.asarray(vit.preprocess_images([image], config))[0]
  ours_uint8_scale = (ours * np.array(config.image_std) + np.array(config.image_mean)) * 255
  assert np.abs(ours_uint8_scale - pil).max() <= 1.0


def test_real_jpegs(shared_data, loaded):
  tf = pytest.importorskip("tensorflow")
  module, params = loaded
  images = [tf.io.decode_jpeg(tf.io.read_file(str(shared_data / "hierarcaps" / "test_imgs" / f)))
            .numpy() for f in IMAGES]
  assert images[-1].shape[-1] == 1  # Greyscale JPEG, repeated to RGB.
  pixels = vit.preprocess_images(images, module.config)
  assert pixels.shape == (3, 32, 32, 3)
  for got, image in zip(np.asarray(pixels), images):
    np.testing.assert_allclose(got, _reference_preprocess(image, module.config), atol=1e-5,
                               rtol=0)
  tokens = _encode(module, params, pixels)
  assert tokens.shape == (3, 17, 32) and np.isfinite(tokens).all()
  assert np.abs(np.asarray(tokens[0] - tokens[1])).max() > 1e-2  # Different images differ.
