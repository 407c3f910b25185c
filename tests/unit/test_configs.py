"""The config base (configs/common.py): every config holds exactly its fields, each commented,
and variants set the fields DESIGN §3 names."""
import inspect
import re

import pytest

from configs import coco
from configs import common
from configs import demo
from configs import f30k

CONFIGS = [(demo, None), (demo, "tiny"), (demo, "variant=baseline_vse"), (coco, None),
           (coco, "text=bert,img=pixels,variant=no_order,tiny"), (f30k, "variant=ditm_soft"),
           (f30k, "tiny")]


@pytest.mark.parametrize("module,arg", CONFIGS)
def test_every_config_has_exactly_the_base_fields(module, arg):
  assert common.fields(module.get_config(arg)) == common.fields(common.base_config())


def test_a_config_without_a_base_field_is_named():
  c = demo.get_config("tiny")
  del c.loss["relax_budget"]
  del c.optim["schedule"]
  assert common.missing_fields(c) == ["loss.relax_budget", "optim.schedule"]
  assert common.missing_fields(coco.get_config()) == []


def test_every_base_field_has_a_comment():
  lines = inspect.getsource(common.base_config).splitlines()
  uncommented = []
  for i, line in enumerate(lines):
    m = re.match(r"\s*c\.([\w.]+) = ", line)
    if not m or "ConfigDict()" in line:
      continue
    above = lines[i - 1].strip()
    if "#" not in line and not above.startswith("#"):
      uncommented.append(m.group(1))
  assert not uncommented, f"fields without a comment: {uncommented}"


@pytest.mark.parametrize("name", list(common.VARIANTS))
def test_variants_set_the_loss_fields(name):
  c = demo.get_config(f"variant={name}")
  want = common.VARIANTS[name]
  assert c.variant == name and c.data.captions_per_image == want["k"]
  for field in ("matching", "relax_beta", "relax_budget", "target_grading", "order_weight"):
    assert c.loss[field] == want[field]
  if name.startswith("baseline"):
    assert c.loss.relax_beta == 0 and c.loss.order_weight == 0 and c.data.captions_per_image == 1


def test_schedule_in_epochs_and_argument_errors():
  c = coco.get_config()
  epoch = -(-113287 // 128)
  assert (c.total_steps, c.eval_every_steps, c.optim.decay_steps) == (25 * epoch, epoch,
                                                                      (15 * epoch,))
  assert c.loss.sum_violation_steps == c.loss.relax_warmup_steps == epoch
  assert f30k.get_config().total_steps == 25 * -(-29000 // 128)
  with pytest.raises(ValueError, match="unknown configs/demo.py argument 'text=bert'"):
    demo.get_config("text=bert")
  with pytest.raises(ValueError, match="text='gpt' is not known"):
    coco.get_config("text=gpt")
  with pytest.raises(ValueError, match="unknown variant 'nope'"):
    f30k.get_config("variant=nope")
