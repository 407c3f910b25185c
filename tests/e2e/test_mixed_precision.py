"""config.dtype='bfloat16': bf16 activations, float32 parameters, optimizer state and loss."""
import functools
import pathlib

import jax
import jax.numpy as jnp
import pytest

from configs import demo
from ditm_jax import step as step_lib
from ditm_jax.data import datasets
from ditm_jax.models import model as model_lib

BERT_DIR = pathlib.Path(__file__).resolve().parents[1] / "golden" / "bert_tiny"


def _config(text):
  c = demo.get_config("tiny")
  c.data.num_train, c.data.num_test = 64, 8
  c.model.text_token_capacity = 0.0  # the plain towers (packing: test_packing.py)
  if text == "bert":
    c.model.text, c.model.bert_path, c.data.max_tokens = "bert", str(BERT_DIR), 16
  return c


def _step(config, vocab_size, params, batch, dtype):
  """(model, new state, metrics) of one `step.train_step` computing in `dtype` from `params`."""
  model = model_lib.build(config, vocab_size=vocab_size, dtype=jnp.dtype(dtype))
  tx = step_lib.make_optimizer(config)
  state = step_lib.new_state(params, tx)
  step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx, config=config))
  return (model, *step(state, batch))


def _float_dtypes(tree):
  return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.parametrize("text", ["bigru", "bert"])
def test_bf16_step_matches_f32(text):
  config = _config(text)
  data = datasets.load(config)
  batch = next(data.train.batches(config, 0))
  model = model_lib.build(config, vocab_size=data.vocab_size)
  params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
  params = model_lib.merge_pretrained(params, model_lib.pretrained_params(config))

  _, _, m32 = _step(config, data.vocab_size, params, batch, "float32")
  bf16_model, state16, m16 = _step(config, data.vocab_size, params, batch, "bfloat16")
  loss32, loss16 = float(m32["train/loss"]), float(m16["train/loss"])
  print(f"{text}: loss f32 {loss32:.6f} bf16 {loss16:.6f} rel {abs(loss16 / loss32 - 1):.2e}")
  assert m16["train/loss"].dtype == jnp.float32
  assert abs(loss16 - loss32) <= 1e-2 * abs(loss32), (loss16, loss32)
  assert loss16 != loss32  # bf16 really computed something differently.
  assert _float_dtypes(state16.params) == _float_dtypes(state16.opt_state) == {
      jnp.dtype(jnp.float32)}

  # Activations inside the towers are bf16, the embeddings float32 (traced, not run).
  (img, txt, _), inter = jax.eval_shape(functools.partial(
      bf16_model.apply, capture_intermediates=True, mutable=["intermediates"]),
                                        {"params": params}, batch)
  assert img.dtype == txt.dtype == jnp.float32
  dense = [v for path, v in jax.tree_util.tree_flatten_with_path(inter)[0]
           if "'fc'" in jax.tree_util.keystr(path)]
  assert dense and all(v.dtype == jnp.bfloat16 for v in dense)
  if text == "bert":
    assert inter["intermediates"]["text_tower"]["bert"]["__call__"][0].dtype == jnp.bfloat16
