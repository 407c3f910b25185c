"""The shard_map objective (ditm_jax.losses_sharded) equals the plain form on 8 fake devices.

One subprocess with 8 CPU devices computes values and gradients of both forms for every case
(K = 1 and 2, both matchings, relaxation and ordering on, duplicated image ids, the sum over
negatives and the hardest negative) and the compiled memory of both at a small batch; the
tests compare them here.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests import e2e_util as e2e

IDS = {
    "distinct": list(range(16)),
    # 3 on three devices (twice on device 6: [3, 3]), 0 and 7 across devices.
    "duplicates": [0, 1, 2, 3, 4, 5, 6, 7, 0, 9, 10, 3, 3, 3, 14, 7],
    "one_image": [5] * 16,  # no negatives at all
}
# (matching, K, step): triplet with sum_violation_steps = 10 sums over negatives at step 5
# (β ramped to 5 %) and takes the hardest at step 200 (β = 0.5). "infonce_graded": graded
# positive targets and a relaxation budget small enough to bind.
FUNCTIONS = [("triplet", 1), ("triplet", 2), ("infonce", 1), ("infonce", 2),
             ("infonce_graded", 2)]
EXTRA = {"infonce_graded": dict(relax_budget=0.02, target_grading=4.0)}
STEPS = {"triplet": (5, 200), "infonce": (200,), "infonce_graded": (200,)}
CASES = [(m, k, s, ids) for m, k in FUNCTIONS for s in STEPS[m] for ids in IDS]


def _worker(out_path):
  """Runs in a process with 8 CPU devices; writes every case's numbers to `out_path`."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import ml_collections
  from ditm_jax import losses, losses_sharded, sharding
  from ditm_jax.bench import loss_memory as bench

  config = ml_collections.ConfigDict({"mesh": {"data": -1}})
  mesh = sharding.make_mesh(config)
  assert mesh.devices.size == 8
  batch = sharding.batch_sharding(mesh)
  results = {}
  for matching, k in FUNCTIONS:
    kwargs = dict(matching=matching.split("_")[0], margin=0.2, max_violation=True, beta=0.5,
                  relax_temp=0.1, order_weight=1.0, order_gamma=0.2, order_min_gap=0.05,
                  relax_warmup_steps=100, sum_violation_steps=10, **EXTRA.get(matching, {}))

    def grads(objective, **extra):
      def loss(img, txt, temperature, ids, d, step):
        return objective(img, txt, ids, d, temperature=temperature, step=step, **kwargs,
                         **extra)
      return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))

    forms = {"plain": grads(losses.objective),
             "sharded": grads(losses_sharded.objective, mesh=mesh)}
    for step in STEPS[matching]:
      for name, ids in IDS.items():
        rng = np.random.default_rng(len(results))
        img = rng.standard_normal((16, 8))
        txt = np.repeat(img, k, 0) * 0.6 + rng.standard_normal((16 * k, 8))
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        args = [jax.device_put(np.asarray(a, dt), batch) for a, dt in
                ((img, np.float32), (txt, np.float32), (ids, np.int32),
                 (rng.uniform(0, 1, 16 * k), np.float32))]
        img, txt, ids_, d = args
        case = f"{matching}-K{k}-step{step}-{name}"
        for form, fn in forms.items():
          (loss, terms), (g_img, g_txt, g_t) = fn(img, txt, jnp.float32(0.07), ids_, d, step)
          values = {"loss": loss, **{f"terms/{t}": v for t, v in terms.items()},
                    "grad/img": g_img, "grad/txt": g_txt, "grad/temperature": g_t}
          results[case, form] = {key: np.asarray(v).tolist() for key, v in values.items()}
  memory = bench.loss_memory(mesh, batch_size=256, captions_per_image=2, dim=64)
  with open(out_path, "w") as f:
    json.dump({"cases": {f"{c}|{f}": v for (c, f), v in results.items()}, "memory": memory}, f)


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
  out = tmp_path_factory.mktemp("sharded") / "results.json"
  env = e2e.env(devices=8)
  code = f"from tests.e2e.test_sharded_loss import _worker; _worker({str(out)!r})"
  proc = subprocess.run([sys.executable, "-c", code], cwd=e2e.ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out) as f:
    return json.load(f)


@pytest.mark.parametrize("matching, k, step, ids", CASES)
def test_values_and_gradients_match_the_plain_form(computed, matching, k, step, ids):
  case = f"{matching}-K{k}-step{step}-{ids}"
  plain, sharded = computed["cases"][f"{case}|plain"], computed["cases"][f"{case}|sharded"]
  assert set(plain) == set(sharded)
  for key in plain:
    np.testing.assert_allclose(sharded[key], plain[key], rtol=2e-5, atol=2e-6, err_msg=key)
  assert np.all(np.isfinite(plain["grad/img"])) and np.all(np.isfinite(plain["grad/txt"]))
  if ids != "one_image":
    assert np.any(np.asarray(plain["grad/img"]) != 0), "a vacuous case"
  if matching.startswith("infonce"):
    assert plain["grad/temperature"] != 0
  if ids == "duplicates" or k == 2:
    assert plain["terms/order_pairs"] > 0  # the ordering term is on


def test_sharded_form_needs_a_fraction_of_one_devices_memory(computed):
  memory = computed["memory"]
  assert memory["devices"] == 8 and memory["batch_size"] == 256
  for matching in ("triplet", "infonce"):
    m = memory[matching]
    # O(B^2 K / 8) per device against O(B^2 K) on one device.
    assert 0 < m["sharded_temp_bytes"] < m["one_device_temp_bytes"] / 4, (matching, m)
    assert m["plain_temp_bytes"] > 0
