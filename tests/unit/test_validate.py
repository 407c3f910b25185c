"""ditm_jax.validate: every shipped config passes; each violation is one line naming the field,
its value and the fix; warm-ups longer than the run are notes, and the learning-rate schedule
clamps its warm-up."""
import numpy as np
import pytest

from configs import coco, demo, f30k
from ditm_jax import step as step_lib
from ditm_jax import validate

SHIPPED = [(demo, a) for a in (None, "tiny", "variant=baseline_vse", "variant=ditm_soft")] + [
    (m, a) for m in (coco, f30k) for a in (None, "tiny", "text=bert,img=pixels")]


@pytest.mark.parametrize("module, arg", SHIPPED)
def test_shipped_configs_pass_without_notes(module, arg):
  assert validate.check(module.get_config(arg), devices=8) == []


def override(config, **fields):
  for path, value in fields.items():
    *parents, leaf = path.split("__")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.mark.parametrize("field, value, rule", [
    ("total_steps", 0, "an integer > 0"),
    ("batch_size", -4, "an integer > 0"),
    ("keep_checkpoints", 0, "an integer > 0"),
    ("dtype", "float16", "one of 'float32', 'bfloat16'"),
    ("optim__lr", -1.0, "> 0"),
    ("optim__lr", float("nan"), "> 0"),
    ("optim__warmup_steps", -1, "an integer >= 0"),
    ("optim__grad_clip", 0.0, "> 0"),
    ("data__captions_per_image", 0, "an integer > 0"),
    ("data__region_drop", 1.5, "in [0, 1]"),
    ("loss__temperature", 0.0, "> 0"),
    ("loss__relax_temp", -0.05, "> 0"),
    ("loss__margin", -0.2, ">= 0"),
    ("loss__relax_beta", -0.5, ">= 0"),
    ("loss__order_weight", -1.0, ">= 0"),
    ("loss__order_min_gap", 2.0, "in [0, 1]"),
    ("loss__matching", "softmax", "one of 'infonce', 'triplet'"),
    ("evals__export__every_steps", -1, "an integer >= 0"),
])
def test_a_violation_is_one_line_with_field_value_and_fix(field, value, rule):
  config = override(demo.get_config("tiny"), **{field: value})
  with pytest.raises(validate.ConfigError) as e:
    validate.check(config, devices=1)
  dotted = field.replace("__", ".")
  assert e.value.lines == [f"config.{dotted}={value!r} must be {rule} "
                           f"({validate.FIELDS[dotted.replace('export', '*')][1]}); "
                           f"pass --config.{dotted}=N with N {rule}"]


def test_every_violation_is_listed():
  config = override(demo.get_config("tiny"), batch_size=0, optim__lr=-1.0,
                    model__embed_dim=0, loss__margin=-1.0)
  with pytest.raises(validate.ConfigError) as e:
    validate.check(config, devices=1)
  assert [l.split("=")[0] for l in e.value.lines] == [
      "config.batch_size", "config.model.embed_dim", "config.loss.margin", "config.optim.lr"]


def test_step_schedule_decay_steps():
  config = override(coco.get_config("tiny"), optim__decay_steps=(30, -2))
  with pytest.raises(validate.ConfigError, match=r"optim.decay_steps=\(30, -2\) must be a list "
                                                 r"of integers >= 0"):
    validate.check(config, devices=1)
  validate.check(demo.get_config("tiny"), devices=1)


@pytest.mark.parametrize("batch, devices, mesh, expected", [
    (30, 8, -1, "config.batch_size=30 must be a multiple of the 8 devices on the data axis; "
                "pass --config.batch_size=32 or 24"),
    (6, 8, -1, "config.batch_size=6 must be a multiple of the 8 devices on the data axis; "
               "pass --config.batch_size=8"),
    (30, 8, 2, None),  # 2 data devices
    (32, 8, 3, "config.mesh.data=3 must be -1 (all devices) or a divisor of the 8 visible "
               "devices; pass --config.mesh.data=-1"),
    (32, 4, 8, "config.mesh.data=8 must be -1 (all devices) or a divisor of the 4 visible "
               "devices; pass --config.mesh.data=-1"),
])
def test_batch_and_mesh_fit_the_devices(batch, devices, mesh, expected):
  config = override(demo.get_config("tiny"), batch_size=batch, mesh__data=mesh)
  if expected is None:
    validate.check(config, devices)
    return
  with pytest.raises(validate.ConfigError) as e:
    validate.check(config, devices)
  assert e.value.lines == [expected]


def test_warmups_longer_than_the_run_are_notes():
  lr_note = ("config.optim.warmup_steps=100 does not fit in total_steps=20: the learning rate "
             "warms up over 19 steps instead, then decays (pass --config.optim.warmup_steps=N "
             "with N < 20 to choose)")
  config = override(demo.get_config(), total_steps=20)  # warm-ups 100 (lr), 31 (beta)
  assert validate.check(config, devices=1) == [
      lr_note, "config.loss.relax_warmup_steps=31 is longer than total_steps=20: beta rises to "
      "65% of loss.relax_beta by the end"]
  triplet = override(coco.get_config("variant=baseline_vse"), total_steps=20)  # no beta
  assert validate.check(triplet, devices=1) == [
      "config.loss.sum_violation_steps=886 is not shorter than total_steps=20: the triplet "
      "loss sums over negatives at every step of the run"]
  summed = override(demo.get_config("variant=baseline_vse"), total_steps=20)  # sums anyway
  assert validate.check(summed, devices=1) == [lr_note]
  step_schedule = override(coco.get_config("tiny"), optim__warmup_steps=80)
  assert validate.check(step_schedule, devices=1) == [
      "config.optim.warmup_steps=80 does not fit in total_steps=40: the learning rate reaches "
      "50% of optim.lr by the end (pass --config.optim.warmup_steps=N with N < 40 to choose)"]


@pytest.mark.parametrize("total, warmup, peak_step", [(20, 100, 19), (20, 19, 19), (1, 5, 1),
                                                      (800, 100, 100)])
def test_cosine_schedule_clamps_its_warmup(total, warmup, peak_step):
  config = override(demo.get_config(), total_steps=total, optim__warmup_steps=warmup)
  schedule = step_lib.lr_schedule(config)
  lr = np.asarray(schedule(np.arange(max(total, 2) + 1)))
  assert np.all(np.isfinite(lr)) and lr.argmax() == peak_step
  np.testing.assert_allclose(lr.max(), config.optim.lr, rtol=1e-6)
  np.testing.assert_allclose(lr[peak_step // 2], config.optim.lr * (peak_step // 2) / peak_step,
                             rtol=1e-5)
  assert lr[-1] == pytest.approx(0.0, abs=1e-9)
