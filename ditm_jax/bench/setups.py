"""The models the benchmarks time, each as (config, model, batch): the demo, the tiny COCO
BiGRU and the reference model (VSE-infinity's layout with a small BERT) on synthetic batches."""

import importlib.util
import os

import jax.numpy as jnp
import numpy as np

from ditm_jax.data import packing_stats
from ditm_jax.data import plan
from ditm_jax.models import bert as bert_lib
from ditm_jax.models import encoders
from ditm_jax.models import model as model_lib
from ditm_jax.models import packed
from ditm_jax.models import packing

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The COCO 5K test captions, where the shared data sits beside the repository.
COCO_CAPTIONS = os.path.join(ROOT, os.pardir, "shared", "data", "coco", "testall_caps.txt")
REFERENCE_BERT = dict(vocab_size=30522, hidden_size=256, num_hidden_layers=4,
                      num_attention_heads=4, intermediate_size=1024)
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072)
COCO_BIGRU_VOCAB = 10000  # stand-in word vocabulary of configs/coco.py:text=bigru
MIN_TOKENS = 8  # synthetic captions: lengths uniform on 8..max_tokens, as in the PyTorch run


def load_config(name, arg=None):
  """`get_config(arg)` of configs/<name>.py."""
  spec = importlib.util.spec_from_file_location(
      f"configs_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


class _SyntheticStats:
  """What `packing_stats.derive` reads of a training split, for `synthetic_batch`'s distribution."""

  def __init__(self, config):
    self.num_regions = config.data.num_regions

  def caption_sum_counts(self, max_tokens):
    one = np.zeros(max_tokens + 1)
    one[MIN_TOKENS:] = 1.0
    return {str(k): packing_stats.sum_pmf(one, k).tolist() for k in range(1, 6)}


def synthetic_batch(config, rows, vocab_size, seed=0):
  """A random training batch of `rows` images in the shapes the pipeline produces."""
  rng = np.random.default_rng(seed)
  k, length = config.data.captions_per_image, config.data.max_tokens
  r, f = config.data.num_regions, config.data.feature_dim
  lengths = rng.integers(MIN_TOKENS, length + 1, rows * k)
  keep = plan.region_keep(rng.random((rows, r)), config.data.region_drop)
  return {
      "regions": rng.standard_normal((rows, r, f)).astype(np.float32),
      "region_mask": keep,
      "tokens": rng.integers(1, vocab_size, (rows * k, length)).astype(np.int32),
      "token_mask": np.arange(length)[None, :] < lengths[:, None],
      "desc": rng.random(rows * k).astype(np.float32),
      "image_ids": np.arange(rows, dtype=np.int32),
  }


def demo_setup(arg=None):
  """(config, data, model) of configs/demo.py."""
  from ditm_jax.data import datasets  # pylint: disable=g-import-not-at-top  (TensorFlow)
  config = load_config("demo", arg)
  data = datasets.load(config)
  return config, data, model_lib.build(config, data.vocab_size)


def coco_bigru_tiny_setup():
  """(config, model, batch) of configs/coco.py:text=bigru,tiny on a synthetic batch."""
  config = load_config("coco", "text=bigru,tiny")
  model = model_lib.build(config, COCO_BIGRU_VOCAB)
  return config, model, synthetic_batch(config, config.batch_size, COCO_BIGRU_VOCAB)


def reference_setup(padded=False, bert=None, dtype="float32"):
  """(config, model, batch) of the reference model.

  36 x 2048 regions -> linear + MLP residual + GPO -> 1024-d; BERT (4 layers, hidden 256,
  4 heads, FFN 1024, random init; or the `bert` fields, e.g. `BERT_BASE`) -> linear
  hidden -> 1024 + GPO; 128 images x 1 caption of 32 tokens; hardest-negative triplet loss
  (VSE-infinity, no relaxation, no ordering); AdamW (configs/coco.py's optimizer, BERT at
  0.1 x lr). The towers pack their valid tokens and kept regions as the trainer does with
  configs/coco.py (buffers sized by `packing_stats.derive` for this batch's distribution: caption
  lengths uniform on 8..32, 20% region drop), or compute on every position when `padded`.
  `dtype` is the towers' compute dtype (parameters stay float32).
  """
  config = load_config("coco", "text=bert,variant=baseline_vse")
  config.batch_size = 128
  config.data.max_tokens = 32
  config.data.captions_per_image = 1
  config.loss.sum_violation_steps = 0  # the hardest negative from the first step
  if padded:
    config.model.text_token_capacity = config.model.region_capacity = 0.0
  packing_stats.derive(config, _SyntheticStats(config), data_devices=1)
  config.dtype = dtype
  dtype = jnp.dtype(dtype)
  image = encoders.RegionEncoder(embed_dim=1024, mlp_hidden=config.model.mlp_hidden, dtype=dtype)
  text = encoders.BertTextEncoder(bert_lib.BertConfig(**(bert or REFERENCE_BERT)),
                                  embed_dim=1024, dtype=dtype)
  if config.model.region_capacity > 0:
    image = packed.PackedRegionEncoder(embed_dim=1024, mlp_hidden=config.model.mlp_hidden,
                                       dtype=dtype, capacity=config.model.region_capacity)
  if config.model.text_token_capacity > 0:
    text = packed.PackedBertTextEncoder(text.bert_config, embed_dim=1024, dtype=dtype,
                                        capacity=config.model.text_token_capacity)
  model = model_lib.DualEncoder(image_tower=image, text_tower=text,
                                init_temperature=config.loss.temperature)
  return config, model, synthetic_batch(config, 128, REFERENCE_BERT["vocab_size"])


def packing_of(config, batch):
  """The reference towers' packing fractions (derived, `packing_stats.derive`) and whether `batch`
  fits them (True: the step timed is the packed one)."""
  masks = {"token_mask": config.model.text_token_capacity,
           "region_mask": config.model.region_capacity}
  return {"text_token_capacity": masks["token_mask"], "region_capacity": masks["region_mask"],
          "batch_fits": all(bool(packing.fits(jnp.asarray(batch[k]), f)) for k, f in masks.items())}
