"""step.train_step's guard: a step with a non-finite loss changes nothing but the counters."""
import functools

import jax
import numpy as np

from configs import demo
from ditm_jax import step as step_lib
from ditm_jax.data import datasets
from ditm_jax.models import model as model_lib


def test_non_finite_step_keeps_params_and_moments_and_records_the_step():
  config = demo.get_config("tiny")
  config.data.num_train, config.data.num_test = 64, 8
  data = datasets.load(config)
  batch = next(data.train.batches(config, 0))
  model = model_lib.build(config, vocab_size=data.vocab_size)
  tx = step_lib.make_optimizer(config)
  params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
  state = step_lib.new_state(params, tx)
  step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx, config=config))

  good, _ = step(state, batch)
  bad_batch = dict(batch, regions=np.where(np.arange(batch["regions"].shape[0])[:, None, None]
                                           == 1, np.nan, batch["regions"]).astype(np.float32))
  bad, metrics = step(good, bad_batch)
  after, _ = step(bad, batch)

  assert not np.isfinite(float(metrics["train/loss"]))
  assert int(good.bad_step) == -1 and int(bad.bad_step) == 1 and int(after.bad_step) == 1
  assert int(bad.step) == 2 and int(after.step) == 3
  for new, old in ((bad.params, good.params), (bad.opt_state, good.opt_state)):
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
      np.testing.assert_array_equal(a, b)  # bit for bit: no NaN, no half update
  # The finite step after it does move them (step 0's warm-up learning rate is 0).
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after.params),
                                                    jax.tree.leaves(bad.params))]
  assert sum(moved) > len(moved) // 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(after.params))
