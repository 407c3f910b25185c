"""bench/flops.py: matmul FLOPs counted from a program's jaxpr, against hand-computed counts."""
import functools

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, PartitionSpec as P
import pytest

from ditm_jax import sharding
from ditm_jax import step as step_lib
from ditm_jax.bench import flops
from ditm_jax.bench import setups
from ditm_jax.bench import train_step


def _abstract(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_matmul_and_batched_einsum():
  assert flops.matmul_flops(jnp.matmul, _abstract(3, 4), _abstract(4, 5)) == 2 * 3 * 4 * 5
  q, k = _abstract(2, 7, 3, 8), _abstract(2, 6, 3, 8)  # (batch, length, heads, head dim)
  attention = lambda q, k: jnp.einsum("bqhd,bkhd->bhqk", q, k)
  assert flops.matmul_flops(attention, q, k) == 2 * 2 * 3 * 7 * 6 * 8


def test_gradient_of_a_two_layer_mlp():
  # Gradient for the weights only: layer 1 runs forward and its weight gradient; layer 2 also
  # the gradient of its input.
  def loss(w, x):
    return jnp.sum(jnp.tanh(x @ w[0]) @ w[1])
  rows, n_in, hidden, n_out = 10, 6, 5, 3
  w = (_abstract(n_in, hidden), _abstract(hidden, n_out))
  layer1, layer2 = 2 * rows * n_in * hidden, 2 * rows * hidden * n_out
  assert flops.matmul_flops(jax.grad(loss), w, _abstract(rows, n_in)) == 2 * layer1 + 3 * layer2


def test_scan_counts_its_length_and_cond_its_cheapest_branch():
  def scanned(w, x):
    return jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), x, None, length=7)[0]
  assert flops.matmul_flops(scanned, _abstract(4, 4), _abstract(2, 4)) == 7 * 2 * 2 * 4 * 4

  def chosen(p, a, b):
    return jax.lax.cond(p, lambda: a @ b, lambda: (a @ b) @ (b.T @ b))
  count = flops.matmul_flops(chosen, jax.ShapeDtypeStruct((), bool), _abstract(3, 4),
                             _abstract(4, 4))
  assert count == 2 * 3 * 4 * 4


def test_shard_map_counts_every_device():
  mesh = AbstractMesh((8,), ("data",))
  f = jax.shard_map(jnp.matmul, mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data"))
  assert flops.matmul_flops(f, _abstract(64, 16), _abstract(16, 4)) == 2 * 64 * 16 * 4


def test_convolution_counts_output_times_kernel_window():
  # A ViT patch embedding: 16x16 stride-16 patches of a 3-channel 32x32 image to 8 features.
  def patches(x, k):
    return jax.lax.conv_general_dilated(x, k, (16, 16), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  count = flops.matmul_flops(patches, _abstract(2, 32, 32, 3), _abstract(16, 16, 3, 8))
  assert count == 2 * (2 * 2 * 2 * 8) * (16 * 16 * 3)


def test_reference_step_count_by_hand():
  """The padded reference step (bench/setups.py) against its count written out layer by layer."""
  config, model, batch = setups.reference_setup(padded=True)
  tx = step_lib.make_optimizer(config)
  mesh = sharding.make_mesh(config)
  abstract = jax.eval_shape(functools.partial(step_lib.init_state, model, tx, batch),
                            jax.random.key(0))
  step = functools.partial(step_lib.train_step, model=model, tx=tx, config=config, mesh=mesh)
  count = flops.matmul_flops(step, abstract, batch)
  b, r, f, d, h = 128, 36, 2048, 1024, config.model.mlp_hidden
  bert = setups.REFERENCE_BERT
  hid, ffn, layers, heads, length = (bert["hidden_size"], bert["intermediate_size"],
                                     bert["num_hidden_layers"], bert["num_attention_heads"], 32)
  mm = lambda m, k, n: 2 * m * k * n
  # Region tower: fc and mlp_in read the input regions (forward + weight gradient), mlp_out
  # also passes its gradient back.
  image = 2 * (mm(b * r, f, d) + mm(b * r, f, h)) + 3 * mm(b * r, h, d)
  # BERT: Q, K, V, out, FFN in and out on every token (forward, input and weight gradients);
  # scores and weighted values per head (forward and both input gradients); then fc hid->D.
  tokens = b * length
  per_layer = 3 * (4 * mm(tokens, hid, hid) + mm(tokens, hid, ffn) + mm(tokens, ffn, hid))
  per_layer += 3 * 2 * b * heads * mm(length, hid // heads, length)
  text = layers * per_layer + 3 * mm(tokens, hid, d)
  # GPO, in both towers: a bidirectional GRU over n positional encodings (32 -> 32, 3 gates)
  # and a scoring layer 32 -> 1, once per set size 0..n (fewer than the b sets). The input
  # kernels run forward and their weight gradient (the encodings are constants); the recurrent
  # kernels and the scores also pass gradients back.
  def gpo(n):
    rows = n + 1
    steps = 2 * n * mm(rows, 32, 3 * 32)  # one kernel, both directions, every position
    return 2 * steps + 3 * steps + 3 * mm(rows * n, 32, 1)
  loss = 3 * mm(b, d, b)  # the similarity matrix, forward and both gradients
  assert count == image + text + gpo(r) + gpo(length) + loss


def test_spec_peaks_and_the_measured_peak():
  assert flops.spec_peak("NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(989.4e12)
  assert flops.spec_peak("TPU v4", "float32") is None
  assert flops.spec_peak("cpu") is None
  peak = flops.measured_matmul_peak(size=256, repeats=1)
  assert peak["flops_per_s"] == pytest.approx(2 * 256**3 / peak["seconds"])


def test_utilisation_rows_of_the_bench():
  results = {"train_step": {
      "demo": {"median_s": 1.0, "matmul_flops": 1e9, "matmul_flops_per_s": 1e9, "devices": 1},
      "reference": {"median_s": 2.0, "matmul_flops": 4e9, "matmul_flops_per_s": 2e9,
                    "devices": 2}}}
  train_step.utilisation(results, "float32")
  peak = results["matmul_peak"]["flops_per_s"]
  assert "share_of_measured_peak" not in results["train_step"]["demo"]
  assert results["train_step"]["reference"]["share_of_measured_peak"] == pytest.approx(1e9 / peak)

