"""BERT text encoder in Flax that imports Hugging Face checkpoints.

`BertModel(config).apply({'params': params}, input_ids, attention_mask)` returns the last hidden
states (B, L, hidden) of transformers' PyTorch `BertModel`, to float32 precision, at every position
(padded query positions included, since only padded keys are masked). The pooler is not built:
its weights, like those of pre-training heads (`cls.*`), are reported as unused on import.
"""
import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ditm_jax import hub
from ditm_jax.models import hf_import
from ditm_jax.models import packing as packing_lib
from ditm_jax.models import transformer


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """BERT hyper-parameters, named as in a Hugging Face `config.json` (defaults: BERT-base)."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"  # 'gelu' is the exact (erf) GELU.
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  pad_token_id: int = 0
  initializer_range: float = 0.02  # Std of the normal init of `init_params`.

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}.")
    transformer.activation(self.hidden_act)  # Raises for an unsupported activation.

  @classmethod
  def from_dict(cls, config: dict[str, Any]) -> "BertConfig":
    """From the contents of a Hugging Face `config.json`; other keys are ignored."""
    if config.get("model_type", "bert") != "bert":
      raise hub.CheckpointError(
          f"config.json has model_type '{config['model_type']}'; this module reads BERT only.")
    if config.get("position_embedding_type", "absolute") != "absolute":
      raise hub.CheckpointError(
          "Only absolute position embeddings are supported, config.json has "
          f"'{config['position_embedding_type']}'.")
    if config.get("is_decoder", False):
      raise hub.CheckpointError("config.json describes a BERT decoder; an encoder is needed.")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in fields})


class BertEmbeddings(nn.Module):
  """Word + token-type + position embeddings, LayerNorm, dropout."""
  config: BertConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids, token_type_ids, deterministic):
    cfg = self.config
    embed = lambda n, name: nn.Embed(
        n, cfg.hidden_size, embedding_init=nn.initializers.normal(cfg.initializer_range),
        dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    positions = jnp.arange(input_ids.shape[1])[None]
    x = embed(cfg.vocab_size, "word_embeddings")(input_ids)
    x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
    x = x + embed(cfg.max_position_embeddings, "position_embeddings")(positions)
    x = transformer.layer_norm(cfg.layer_norm_eps, self.dtype, self.param_dtype, "layer_norm")(x)
    return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertModel(nn.Module):
  """BERT encoder: returns the last hidden states (B, L, hidden_size) in `dtype`.

  Attributes:
    config: the architecture.
    dtype: compute dtype (float32 matches PyTorch; bfloat16 for speed). Softmax is float32.
    param_dtype: parameter dtype, float32 by default.
  """
  config: BertConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None, deterministic: bool = True,
               packing: packing_lib.Packing | None = None, unpack: bool = True) -> jax.Array:
    """Encodes int token ids (B, L); `attention_mask` (B, L) is 1 on real tokens, 0 on padding.

    With `packing` (of `attention_mask`, see `packing.plan`) the layers run on the
    packed rows of the real tokens only, skipping the padding's dense work; the real tokens'
    states are the same (up to float summation order) and the padding's come back as zeros.
    `unpack` False returns the packed rows (C, hidden_size) instead, for row-wise layers after.
    """
    cfg = self.config
    if input_ids.shape[1] > cfg.max_position_embeddings:
      raise ValueError(f"Sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                       f"{cfg.max_position_embeddings}.")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    mask = None if attention_mask is None else attention_mask.astype(bool)
    x = BertEmbeddings(cfg, self.dtype, self.param_dtype, name="embeddings")(
        input_ids, token_type_ids, deterministic)
    if packing is not None:
      x = packing.pack(x)
    for i in range(cfg.num_hidden_layers):
      x = transformer.EncoderLayer(
          num_heads=cfg.num_attention_heads, mlp_dim=cfg.intermediate_size,
          activation=cfg.hidden_act, pre_norm=False, layer_norm_eps=cfg.layer_norm_eps,
          dropout_rate=cfg.hidden_dropout_prob,
          attention_dropout_rate=cfg.attention_probs_dropout_prob,
          kernel_init=nn.initializers.normal(cfg.initializer_range), dtype=self.dtype,
          param_dtype=self.param_dtype, name=f"layer_{i}")(x, mask, deterministic, packing)
    return x if packing is None or not unpack else packing.unpack(x, *input_ids.shape)


def _hf_names(config: BertConfig) -> dict[str, Any]:
  """Flax parameter tree -> (PyTorch name without 'bert.', transform)."""
  names = {"embeddings": {
      "word_embeddings": {"embedding": ("embeddings.word_embeddings.weight", hf_import.SAME)},
      "token_type_embeddings": {
          "embedding": ("embeddings.token_type_embeddings.weight", hf_import.SAME)},
      "position_embeddings": {
          "embedding": ("embeddings.position_embeddings.weight", hf_import.SAME)},
      "layer_norm": hf_import.layer_norm("embeddings.LayerNorm"),
  }}
  for i in range(config.num_hidden_layers):
    hf = f"encoder.layer.{i}"
    names[f"layer_{i}"] = {
        "attention": {
            "query": hf_import.linear(f"{hf}.attention.self.query"),
            "key": hf_import.linear(f"{hf}.attention.self.key"),
            "value": hf_import.linear(f"{hf}.attention.self.value"),
            "out": hf_import.linear(f"{hf}.attention.output.dense"),
        },
        "attention_norm": hf_import.layer_norm(f"{hf}.attention.output.LayerNorm"),
        "mlp": {"fc1": hf_import.linear(f"{hf}.intermediate.dense"),
                "fc2": hf_import.linear(f"{hf}.output.dense")},
        "mlp_norm": hf_import.layer_norm(f"{hf}.output.LayerNorm"),
    }
  return names


def _dummy_ids(config: BertConfig) -> jax.Array:
  return jnp.zeros((1, min(8, config.max_position_embeddings)), jnp.int32)


def convert_params(state_dict: dict[str, np.ndarray], config: BertConfig
                   ) -> tuple[dict[str, Any], hf_import.ImportReport]:
  """PyTorch-named tensors (with or without 'bert.') -> (float32 Flax params, import report).

  Raises:
    hub.CheckpointError: naming every missing or mis-shaped weight.
  """
  module = BertModel(config)
  expected = jax.eval_shape(module.init, jax.random.key(0), _dummy_ids(config))["params"]
  return hf_import.convert_state_dict(state_dict, _hf_names(config), expected, prefix="bert")


def init_params(config: BertConfig, rng: jax.Array, dtype: Any = jnp.float32
                ) -> tuple[BertModel, dict[str, Any]]:
  """A randomly initialised (module, float32 params), weights ~ N(0, initializer_range)."""
  module = BertModel(config, dtype=dtype)
  return module, jax.jit(module.init)(rng, _dummy_ids(config))["params"]


def load_pretrained(path_or_name: str | os.PathLike, dtype: Any = jnp.float32
                    ) -> tuple[BertModel, dict[str, Any]]:
  """Loads a Hugging Face BERT checkpoint as (module computing in `dtype`, float32 params).

  Args:
    path_or_name: a directory with config.json and model.safetensors (or pytorch_model.bin where
      torch is installed), or a hub model name (needs the network or the hub cache).
    dtype: compute dtype of the module; parameters stay float32 (host NumPy arrays).

  Raises:
    hub.CheckpointError: the checkpoint cannot be found or a needed weight is missing.
  """
  directory = hub.resolve_checkpoint_dir(path_or_name)
  config = BertConfig.from_dict(hub.read_json(directory, "config.json"))
  params, report = convert_params(hf_import.read_state_dict(directory), config)
  hf_import.log_report(directory, report)
  return BertModel(config, dtype=dtype), params
