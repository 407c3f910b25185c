"""BERT text tower, ViT pixel tower, pretrained-weight merging and backbone optimizer groups."""
import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from ditm_jax import step as step_lib
from ditm_jax.models import bert
from ditm_jax.models import encoders
from ditm_jax.models import gpo
from ditm_jax.models import model as model_lib
from ditm_jax.data import tokenizer
from ditm_jax.models import vit

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "golden"
BERT_DIR, VIT_DIR = GOLDEN / "bert_tiny", GOLDEN / "vit_tiny"
TEXTS = ["A man riding a horse.", "Two dogs on the street", "a red car",
         "The cat sits on a table near the window"]
JPEGS = ("COCO_val2014_000000000139.jpg", "COCO_val2014_000000000776.jpg",
         "COCO_val2014_000000007888.jpg")  # The last one is greyscale.


def _config(text="bert", image="regions", **model):
  c = demo.get_config("tiny")
  c.model.text, c.model.image = text, image
  c.model.bert_path, c.model.vit_path = str(BERT_DIR), str(VIT_DIR)
  c.data.max_tokens, c.data.image_size = 16, 32
  c.model.update(model)
  return c


def _batch(num_images=2, k=2, length=16):
  tok = tokenizer.load_tokenizer(BERT_DIR, length)
  ids, lengths = tok.ids_and_lengths((TEXTS * 2)[:num_images * k])
  batch = {"tokens": ids, "token_mask": np.arange(length)[None] < lengths[:, None],
           "regions": np.ones((num_images, 36, 64), np.float32),
           "region_mask": np.ones((num_images, 36), bool)}
  return batch


@pytest.fixture(scope="module")
def bert_pretrained():
  return bert.load_pretrained(BERT_DIR)


@pytest.fixture(scope="module")
def built():
  """(config, model, randomly initialised params, batch) of a dual encoder with a BERT tower."""
  config = _config()
  model = model_lib.build(config, vocab_size=10)
  batch = jax.tree.map(jnp.asarray, _batch())
  return config, model, jax.jit(model.init)(jax.random.key(0), batch)["params"], batch


def _pool(gpo_params, features, mask):
  pooled = jax.jit(gpo.GPO().apply)({"params": gpo_params}, features, mask)
  return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def test_bert_tower_is_bert_then_linear_gpo_l2(bert_pretrained):
  module, bert_params = bert_pretrained
  tower = encoders.BertTextEncoder(module.config, embed_dim=24)
  batch, short = _batch(), _batch(length=12)
  tokens, mask = batch["tokens"], batch["token_mask"]
  params = jax.jit(tower.init)(jax.random.key(0), tokens, mask)["params"]
  params = model_lib.merge_pretrained(params, {("bert",): bert_params})
  apply = jax.jit(tower.apply)
  out = apply({"params": params}, tokens, mask)
  assert out.shape == (4, 24) and out.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
  # The same computation assembled by hand from the parts.
  hidden = jax.jit(module.apply)({"params": bert_params}, tokens, mask)
  fc = params["fc"]
  want = _pool(params["gpo"], hidden @ fc["kernel"] + fc["bias"], mask)
  np.testing.assert_allclose(out, want, atol=1e-5)
  # Padding beyond the valid tokens changes nothing.
  np.testing.assert_allclose(apply({"params": params}, short["tokens"], short["token_mask"]),
                             out, atol=1e-5)


def test_build_merges_pretrained_backbone_keeping_sharding(built):
  config, model, params, batch = built
  pretrained = model_lib.pretrained_params(config)
  assert list(pretrained) == [("text_tower", "bert")]
  merged = model_lib.merge_pretrained(params, pretrained)
  jax.tree.map(np.testing.assert_array_equal, merged["text_tower"]["bert"],
               bert.load_pretrained(BERT_DIR)[1])
  for part in ("image_tower", "log_temperature"):
    jax.tree.map(np.testing.assert_array_equal, merged[part], params[part])
  np.testing.assert_array_equal(merged["text_tower"]["fc"]["kernel"],
                                params["text_tower"]["fc"]["kernel"])
  leaves = lambda t: jax.tree.leaves(t["text_tower"]["bert"])
  assert all(a.sharding == b.sharding and a.dtype == b.dtype
             for a, b in zip(leaves(merged), leaves(params)))
  img, txt, _ = jax.jit(model.apply)({"params": merged}, batch)
  assert img.shape == (2, 64) and txt.shape == (4, 64) and np.isfinite(txt).all()


def test_merge_rejects_mismatched_weights():
  params = {"t": {"bert": {"w": jnp.zeros((2, 3))}}}
  with pytest.raises(ValueError, match="shape"):
    model_lib.merge_pretrained(params, {("t", "bert"): {"w": np.zeros((3, 2))}})
  with pytest.raises(ValueError, match="names"):
    model_lib.merge_pretrained(params, {("t", "bert"): {"v": np.zeros((2, 3))}})
  with pytest.raises(ValueError, match="No parameters"):
    model_lib.merge_pretrained(params, {("t", "vit"): {"w": np.zeros((2, 3))}})


@pytest.mark.parametrize("fields, message", [
    (dict(text="bert", bert_path=""), "needs config.model.bert_path"),
    (dict(text="bert", max_tokens=32), "config.data.max_tokens=32 exceeds the 16 positions"),
    (dict(image="vit", image_size=224), "config.data.image_size=224 differs"),
    (dict(image="pixels"), "config.model.image='pixels' is not known"),
    (dict(text="gpt"), "config.model.text='gpt' is not known"),
])
def test_config_errors_name_the_field(fields, message):
  config = _config(text="bigru")
  for name, value in fields.items():
    (config.data if name in ("max_tokens", "image_size") else config.model)[name] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    model_lib.build(config, vocab_size=10)


def _updates(config, params, steps=2):
  """Updates of the `steps`-th AdamW step with all-ones gradients (lr 0 at step 0)."""
  tx = step_lib.make_optimizer(config)

  @jax.jit
  def run(params):
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(steps):
      updates, state = tx.update(grads, state, params)
    return updates, state
  return run(params)


def test_backbone_lr_multiplier_and_freezing(built):
  config, _, params, _ = built
  config = config.copy_and_resolve_references()
  config.model.text_lr_mult = 0.1
  config.optim.weight_decay, config.optim.warmup_steps = 0.0, 1
  labels = step_lib.param_labels(config, params)
  assert set(jax.tree.leaves(labels["text_tower"]["bert"])) == {"text_backbone"}
  assert set(jax.tree.leaves(labels["text_tower"]["fc"])) == {"default"}
  assert labels["log_temperature"] == "frozen"
  updates, opt_state = _updates(config, params)
  head = np.asarray(updates["text_tower"]["fc"]["bias"])
  backbone = np.asarray(updates["text_tower"]["bert"]["layer_0"]["mlp"]["fc1"]["bias"])
  lr = config.optim.lr
  np.testing.assert_allclose(head, -lr, rtol=1e-4)  # Adam: ~ -lr * sign(g).
  np.testing.assert_allclose(backbone, -0.1 * lr, rtol=1e-4)
  assert {x.dtype for x in jax.tree.leaves(opt_state) if x.ndim} == {jnp.dtype(jnp.float32)}

  config.model.freeze_text_backbone = True
  config.optim.weight_decay = 0.1  # Frozen weights are not decayed either.
  labels = step_lib.param_labels(config, params)
  assert set(jax.tree.leaves(labels["text_tower"]["bert"])) == {"frozen"}
  updates, _ = _updates(config, params)
  assert all(not np.any(u) for u in jax.tree.leaves(updates["text_tower"]["bert"]))
  assert np.all(np.asarray(updates["text_tower"]["fc"]["bias"]) < 0)


def test_frozen_backbone_gets_no_gradient(built):
  config, _, params, batch = built
  config = config.copy_and_resolve_references()
  config.model.freeze_text_backbone = True
  model = model_lib.build(config, vocab_size=10)
  grads = jax.jit(jax.grad(lambda p: model.apply({"params": p}, batch)[1].sum()))(params)
  assert all(not np.any(g) for g in jax.tree.leaves(grads["text_tower"]["bert"]))
  assert np.any(grads["text_tower"]["fc"]["kernel"])


def _real_pixels(directory, size):
  """JPEG -> RGB uint8 resized to (size, size): what the data pipeline feeds as 'pixels'."""
  tf = pytest.importorskip("tensorflow")
  out = []
  for name in JPEGS:
    image = tf.io.decode_jpeg(tf.io.read_file(str(directory / name)), channels=3)
    image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    out.append(tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8).numpy())
  return np.stack(out)


def test_vit_tower_on_real_jpegs(shared_data):
  config = _config(text="bigru", image="vit")
  assert model_lib.image_inputs(config) == ("pixels",)
  pixels = _real_pixels(shared_data / "hierarcaps" / "test_imgs", config.data.image_size)
  batch = {**_batch(num_images=3, k=1), "pixels": pixels}
  model = model_lib.build(config, vocab_size=200)
  init = jax.jit(functools.partial(model.init, method="embed_images"))  # the image tower only
  params = init(jax.random.key(0), batch)["params"]
  merged = model_lib.merge_pretrained(params, model_lib.pretrained_params(config))
  vit_module, vit_params = vit.load_pretrained(VIT_DIR)
  jax.tree.map(np.testing.assert_array_equal, merged["image_tower"]["vit"], vit_params)
  embed = jax.jit(lambda p, b: model.apply({"params": p}, b, method="embed_images"))
  img = np.asarray(embed(merged, batch))
  assert img.shape == (3, 64) and np.isfinite(img).all()
  np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
  assert np.abs(img[0] - img[1]).max() > 1e-3  # Different images differ.
  # The tower normalises with the checkpoint's mean/std and pools the patch tokens, not CLS.
  tokens = jax.jit(vit_module.apply)({"params": vit_params},
                                     vit.normalize_pixels(pixels, vit_module.config))
  fc = merged["image_tower"]["fc"]
  patches = tokens[:, 1:] @ fc["kernel"] + fc["bias"]
  want = _pool(merged["image_tower"]["gpo"], patches, np.ones(patches.shape[:2], bool))
  np.testing.assert_allclose(img, want, atol=1e-5)
  # Float pixels in [0, 255] are read like uint8 ones.
  as_float = embed(merged, {**batch, "pixels": pixels.astype(np.float32)})
  np.testing.assert_allclose(as_float, img, atol=1e-6)
