"""Forward-pass timing of the Flax BERT against transformers' PyTorch BertModel.

`bert_forward_seconds()` times a jitted forward of this project's BERT (random init, BERT-base
by default) on a (batch, length) batch of token ids, and the same for PyTorch where torch is
importable (random init, eval mode, `torch.no_grad`). JAX and PyTorch are imported lazily, so
the PyTorch half also runs in an environment without JAX:

  python -m ditm_jax.models.bench_bert                  # both, where both are installed
  /work/torchvenv/bin/python -m ditm_jax.models.bench_bert --only=torch
"""
import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Any, Callable

import numpy as np


def _inputs(batch: int, length: int, vocab_size: int, seed: int = 0):
  """Token ids (B, L) int32 and an attention mask with lengths in [L/2, L], as NumPy."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab_size, (batch, length), dtype=np.int32)
  lengths = rng.integers(max(length // 2, 1), length + 1, batch)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  return ids * mask, mask


def _median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def jax_forward_seconds(config=None, batch: int = 128, length: int = 32,
                        dtype: str = "float32", repeats: int = 10) -> dict[str, Any]:
  """Median seconds of a jitted forward of `bert.BertModel(config)` (compilation excluded)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ditm_jax.models import bert  # pylint: disable=g-import-not-at-top
  config = config or bert.BertConfig()
  module, params = bert.init_params(config, jax.random.key(0), dtype=jnp.dtype(dtype))
  ids, mask = (jnp.asarray(x) for x in _inputs(batch, length, config.vocab_size))
  forward = jax.jit(module.apply)
  seconds = _median_seconds(
      lambda: forward({"params": params}, ids, mask).block_until_ready(), repeats)
  return {"seconds": seconds, "dtype": dtype, "device": str(jax.devices()[0].device_kind),
          "jax": jax.__version__}


def torch_forward_seconds(config=None, batch: int = 128, length: int = 32,
                          repeats: int = 10) -> dict[str, Any] | None:
  """Median seconds of transformers' PyTorch BertModel forward (float32, eval, no_grad).

  `config` is a `bert.BertConfig` or a dict of Hugging Face config fields (default: BERT-base).
  Returns None where torch or transformers' PyTorch models are not importable.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    model_class = transformers.BertModel
  except (ImportError, AttributeError):
    return None
  if dataclasses.is_dataclass(config):
    config = dataclasses.asdict(config)
  hf_config = transformers.BertConfig(**(config or {}))
  torch.manual_seed(0)
  model = model_class(hf_config, add_pooling_layer=False).eval()
  device = "cuda" if torch.cuda.is_available() else "cpu"
  model.to(device)
  ids, mask = (torch.from_numpy(x.astype(np.int64)).to(device)
               for x in _inputs(batch, length, hf_config.vocab_size))

  def forward():
    with torch.no_grad():
      model(input_ids=ids, attention_mask=mask).last_hidden_state.sum().item()
  return {"seconds": _median_seconds(forward, repeats), "dtype": "float32", "device": device,
          "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def bert_forward_seconds(config=None, batch: int = 128, length: int = 32, dtype: str = "float32",
                         repeats: int = 10) -> dict[str, Any]:
  """{'jax': {...'seconds'...}, 'torch': {...} or None, ...}: median forward seconds of BERT.

  Args:
    config: a `bert.BertConfig` (default: BERT-base, i.e. `BertConfig()`), random weights.
    batch: sequences per forward.
    length: tokens per sequence (random lengths in [length/2, length] are valid).
    dtype: compute dtype of the JAX model ('float32' or 'bfloat16'); PyTorch runs float32.
    repeats: timed forwards after one warm-up (compilation) call; the median is reported.
  """
  return {"batch": batch, "length": length, "machine": _machine(),
          "jax": jax_forward_seconds(config, batch, length, dtype, repeats),
          "torch": torch_forward_seconds(config, batch, length, repeats)}


def _machine() -> str:
  return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", choices=("jax", "torch"), default=None)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--length", type=int, default=32)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  if args.only == "torch":
    result = {"batch": args.batch, "length": args.length, "machine": _machine(),
              "torch": torch_forward_seconds(None, args.batch, args.length, args.repeats)}
  elif args.only == "jax":
    result = {"batch": args.batch, "length": args.length, "machine": _machine(),
              "jax": jax_forward_seconds(None, args.batch, args.length, args.dtype, args.repeats)}
  else:
    result = bert_forward_seconds(None, args.batch, args.length, args.dtype, args.repeats)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
