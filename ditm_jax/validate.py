"""The config checked once, before any work: one line per violated constraint.

`check(config, devices)` reads every field of `FIELDS` and every rule of `RULES` (`main` has
checked before that the config holds every field of configs/common.py), and raises `ConfigError`
with one line per violation (the field, its value, the fix); `main` prints them and exits
with status 2. Warm-ups longer than the run are not errors: `check` returns a note for each
(the learning-rate warm-up is clamped by `step.lr_schedule`).

A new constrained field is one more row of `FIELDS`; a constraint between fields is one more
function in `RULES`. Nothing starts a device here: the caller passes the number of visible
devices.
"""

import dataclasses
import math
from typing import Any, Callable

from ditm_jax import losses


class ConfigError(ValueError):
  """The config violates constraints; `lines` holds one message per violation."""

  def __init__(self, lines):
    super().__init__("\n".join(lines))
    self.lines = list(lines)


@dataclasses.dataclass(frozen=True)
class Rule:
  """A constraint on one value: `ok(value)`, described as `text` (e.g. "> 0")."""
  text: str
  ok: Callable[[Any], bool]


def _number(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v):
  return isinstance(v, int) and not isinstance(v, bool)


POSITIVE_INT = Rule("an integer > 0", lambda v: _int(v) and v > 0)
NON_NEGATIVE_INT = Rule("an integer >= 0", lambda v: _int(v) and v >= 0)
POSITIVE = Rule("> 0", lambda v: _number(v) and v > 0)
NON_NEGATIVE = Rule(">= 0", lambda v: _number(v) and v >= 0)
PROBABILITY = Rule("in [0, 1]", lambda v: _number(v) and 0 <= v <= 1)


def one_of(*choices):
  return Rule(f"one of {', '.join(map(repr, choices))}", lambda v: v in choices)


def each(rule, text):
  """`rule` for every element of a list or tuple, described as `text` ("integers >= 0")."""
  return Rule(f"a list of {text}",
              lambda v: isinstance(v, (list, tuple)) and all(rule.ok(x) for x in v))


# field -> (rule, what the field is). A '*' matches every key at that level (evals.*).
FIELDS = {
    "total_steps": (POSITIVE_INT, "optimisation steps"),
    "batch_size": (POSITIVE_INT, "global batch, in images"),
    "dtype": (one_of("float32", "bfloat16"), "compute dtype"),
    "log_every_steps": (POSITIVE_INT, "steps between train log lines"),
    "eval_every_steps": (NON_NEGATIVE_INT, "steps between evaluations, 0 = only at the end"),
    "checkpoint_every_steps": (POSITIVE_INT, "steps between checkpoints"),
    "keep_checkpoints": (POSITIVE_INT, "newest checkpoints kept"),
    "evals.*.every_steps": (NON_NEGATIVE_INT, "steps between this evaluation, 0 = at the end"),
    "data.captions_per_image": (POSITIVE_INT, "K, captions drawn per image"),
    "data.max_tokens": (POSITIVE_INT, "caption tokens kept"),
    "data.num_train": (POSITIVE_INT, "demo training images"),
    "data.num_test": (POSITIVE_INT, "demo test images"),
    "data.num_dev": (NON_NEGATIVE_INT, "demo dev images, 0 = no dev split"),
    "data.feature_dim": (POSITIVE_INT, "region feature width"),
    "data.num_regions": (POSITIVE_INT, "regions per image"),
    "data.noise": (NON_NEGATIVE, "std of the demo's region feature noise"),
    "data.region_drop": (PROBABILITY, "probability of dropping a region"),
    "data.token_drop": (PROBABILITY, "probability of deleting or masking a token"),
    "data.shuffle_window": (POSITIVE_INT, "images shuffled together"),
    "data.train_shards": (POSITIVE_INT, "TFRecord files of the train split"),
    "data.prefetch": (NON_NEGATIVE_INT, "batches prepared ahead"),
    "data.image_size": (POSITIVE_INT, "side of the square input image"),
    "descriptiveness.normalize": (one_of("quantile", "minmax"), "descriptiveness score scale"),
    "model.embed_dim": (POSITIVE_INT, "D of the joint space"),
    "model.mlp_hidden": (POSITIVE_INT, "hidden width of the region MLP"),
    "model.word_dim": (POSITIVE_INT, "word embedding width"),
    "model.text_lr_mult": (NON_NEGATIVE, "text backbone learning rate, x optim.lr"),
    "model.image_lr_mult": (NON_NEGATIVE, "image backbone learning rate, x optim.lr"),
    "model.text_token_capacity": (PROBABILITY, "packed share of the token positions"),
    "model.region_capacity": (PROBABILITY, "packed share of the region positions"),
    "model.packing_overflow": (PROBABILITY, "share of steps allowed to run padded"),
    "loss.matching": (one_of(*losses.MATCHING), "matching loss"),
    "loss.temperature": (POSITIVE, "tau of InfoNCE"),
    "loss.margin": (NON_NEGATIVE, "alpha, the triplet margin"),
    "loss.sum_violation_steps": (NON_NEGATIVE_INT, "steps summing over negatives first"),
    "loss.relax_beta": (NON_NEGATIVE, "beta, strength of false-negative relaxation"),
    "loss.relax_temp": (POSITIVE, "tau_r, temperature of the relaxation sigmoid"),
    "loss.relax_warmup_steps": (NON_NEGATIVE_INT, "steps over which beta rises from 0"),
    "loss.order_weight": (NON_NEGATIVE, "lambda, weight of the ordering loss"),
    "loss.order_gamma": (NON_NEGATIVE, "gamma, ordering margin per unit of gap"),
    "loss.order_min_gap": (PROBABILITY, "delta, smallest descriptiveness gap ordered"),
    "loss.relax_budget": (Rule(">= 0 (inf: no cap)", lambda v: NON_NEGATIVE.ok(v) or v == math.inf),
                          "rho, relaxed target mass per unit of positive mass"),
    "loss.target_grading": (NON_NEGATIVE, "g, grading of positive targets by descriptiveness"),
    "loss.collapse_gap": (NON_NEGATIVE, "pos_sim - neg_sim below which a run has collapsed"),
    "mesh.fsdp_min_size": (NON_NEGATIVE_INT, "elements below which arrays stay replicated"),
    "optim.lr": (POSITIVE, "peak learning rate"),
    "optim.schedule": (one_of("cosine", "step"), "learning rate schedule"),
    "optim.warmup_steps": (NON_NEGATIVE_INT, "linear learning rate warm-up"),
    "optim.decay_steps": (each(NON_NEGATIVE_INT, "integers >= 0"), "steps where the rate drops"),
    "optim.decay_factor": (POSITIVE, "factor applied at each of optim.decay_steps"),
    "optim.weight_decay": (NON_NEGATIVE, "AdamW weight decay"),
    "optim.grad_clip": (POSITIVE, "global gradient-norm clip"),
}


def _values(config, pattern):
  """(path, value) of every field matching `pattern` ('a.b', 'evals.*.every_steps')."""
  found = [("", config)]
  for key in pattern.split("."):
    found = [(f"{path}.{k}" if path else k, node[k]) for path, node in found
             if hasattr(node, "keys") for k in (node.keys() if key == "*" else [key])
             if k in node]
  return found


def _data_devices(config, devices):
  """Devices on the data axis: `config.mesh.data`, -1 for all `devices`."""
  n = config.mesh.data
  return devices if n == -1 else n


def _mesh_fits(config, devices):
  n = config.mesh.data
  if n == -1 or (_int(n) and 0 < n <= devices and devices % n == 0):
    return []
  return [f"config.mesh.data={n!r} must be -1 (all devices) or a divisor of the {devices} "
          f"visible devices; pass --config.mesh.data=-1"]


def _batch_divides(config, devices):
  n, b = _data_devices(config, devices), config.batch_size
  if _mesh_fits(config, devices) or not POSITIVE_INT.ok(b) or b % n == 0:
    return []
  up = -(-b // n) * n
  return [f"config.batch_size={b} must be a multiple of the {n} devices on the data axis; "
          f"pass --config.batch_size={up}" + (f" or {up - n}" if up - n > 0 else "")]


# Constraints between fields: (config, visible devices) -> error lines.
RULES = [_mesh_fits, _batch_divides]


def _warmup_notes(config):
  """Warm-ups longer than the run: what happens instead (notes, not errors)."""
  total, o, notes = config.total_steps, config.optim, []
  if not POSITIVE_INT.ok(total):
    return notes
  warmup = o.warmup_steps
  if NON_NEGATIVE_INT.ok(warmup) and warmup >= max(total, 2):
    if o.schedule == "cosine":  # clamped in step.lr_schedule
      what = f"the learning rate warms up over {max(total, 2) - 1} steps instead, then decays"
    else:
      what = f"the learning rate reaches {total / warmup:.0%} of optim.lr by the end"
    notes.append(f"config.optim.warmup_steps={warmup} does not fit in total_steps={total}: "
                 f"{what} (pass --config.optim.warmup_steps=N with N < {total} to choose)")
  relax = config.loss.relax_warmup_steps
  if NON_NEGATIVE_INT.ok(relax) and relax > total and config.loss.relax_beta:
    notes.append(f"config.loss.relax_warmup_steps={relax} is longer than total_steps={total}: "
                 f"beta rises to {total / relax:.0%} of loss.relax_beta by the end")
  summed = config.loss.sum_violation_steps
  if (NON_NEGATIVE_INT.ok(summed) and summed >= total and config.loss.max_violation
      and config.loss.matching == "triplet"):
    notes.append(f"config.loss.sum_violation_steps={summed} is not shorter than total_steps="
                 f"{total}: the triplet loss sums over negatives at every step of the run")
  return notes


def check(config, devices):
  """Notes (lines) for an acceptable `config` on `devices` visible devices.

  Raises:
    ConfigError: one line per violated constraint of FIELDS and RULES.
  """
  errors = []
  for pattern, (rule, what) in FIELDS.items():
    for path, value in _values(config, pattern):
      if not rule.ok(value):
        errors.append(f"config.{path}={value!r} must be {rule.text} ({what}); "
                      f"pass --config.{path}=N with N {rule.text}")
  for rule in RULES:
    errors += rule(config, devices)
  if errors:
    raise ConfigError(errors)
  return _warmup_notes(config)
