"""Named loss variants (DESIGN §3) and the config pieces every config shares.

A variant is a set of config fields, never an `if`.
"""

import ml_collections

# Every variant sets the same fields: the matching loss, the two uses of descriptiveness
# (relaxation: beta and its budget rho; ordering: graded targets g and the hinge lambda) and K.
# The DITM presets were chosen by a study of variants x 3 seeds on two worlds (README).
_DITM = dict(matching="infonce", relax_beta=0.5, relax_budget=0.2, target_grading=4.0,
             order_weight=1.0, k=2)
VARIANTS = {
    # VSE-infinity: hardest-negative triplet loss, binary supervision, one caption per image.
    "baseline_vse": dict(_DITM, matching="triplet", relax_beta=0.0, target_grading=0.0,
                         order_weight=0.0, k=1),
    # Plain InfoNCE, binary supervision, one caption per image.
    "baseline_infonce": dict(_DITM, relax_beta=0.0, target_grading=0.0, order_weight=0.0, k=1),
    # DITM: InfoNCE over K captions per image with descriptiveness-weighted soft targets
    # (budgeted relaxation of generic negatives, positives graded by d) and the ordering hinge.
    "ditm": _DITM,
    # DITM with descriptiveness in the soft targets only (no ordering hinge).
    "ditm_soft": dict(_DITM, order_weight=0.0),
    # Ablations of `ditm`: without relaxation; without ordering (neither graded targets nor
    # the hinge).
    "no_relax": dict(_DITM, relax_beta=0.0),
    "no_order": dict(_DITM, target_grading=0.0, order_weight=0.0),
}


def apply_variant(config, name):
  """Sets the loss fields and captions per image of variant `name` on `config`."""
  if name not in VARIANTS:
    raise ValueError(f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}")
  config.variant = name
  for field, value in VARIANTS[name].items():
    if field == "k":
      config.data.captions_per_image = value
    else:
      config.loss[field] = value
  return config


def parse_arg(arg, known_flags=()):
  """Parses a config string like 'variant=ditm,tiny' into (dict of key=value, set of flags)."""
  values, flags = {}, set()
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    if "=" in part:
      key, value = part.split("=", 1)
      values[key.strip()] = value.strip()
    elif part in known_flags:
      flags.add(part)
    else:
      raise ValueError(f"unknown config argument {part!r}; known flags: {', '.join(known_flags)} "
                       "(and key=value pairs)")
  return values, flags


def add_loss_fields(config, relax_warmup_steps, sum_violation_steps, max_violation=True):
  """The objective's fields (DESIGN §3) with the DITM defaults; `variant=` then picks the terms.

  `relax_warmup_steps` is the linear ramp of beta (about one epoch); `sum_violation_steps` the
  triplet loss's sum-over-negatives phase before the hardest negative (VSE-infinity: one epoch),
  or with `max_violation=False` it sums throughout (the small worlds, where the hardest
  negative collapsed it; README, "Collapse").
  """
  config.loss = ml_collections.ConfigDict()
  config.loss.matching = "infonce"  # 'infonce' | 'triplet'
  config.loss.temperature = 0.05  # tau of the soft-target InfoNCE
  config.loss.learn_temperature = False  # learn log(tau), clipped to [0.01, 1]
  config.loss.margin = 0.2  # alpha of the triplet loss
  config.loss.max_violation = max_violation  # hardest negative (True) or sum over negatives
  config.loss.sum_violation_steps = sum_violation_steps  # sum over negatives this many steps first
  config.loss.relax_beta = 0.5  # beta, strength of false-negative relaxation
  config.loss.relax_temp = 0.05  # tau_r of the relaxation sigmoid
  config.loss.relax_warmup_steps = relax_warmup_steps  # beta rises linearly from 0 over these steps
  # rho, infonce: a row's relaxed target mass is capped at rho x its positive mass (inf: no cap)
  config.loss.relax_budget = 0.2
  # g, infonce: image->text targets of an image's own captions ~ exp(g d); at the optimum two
  # captions' similarities differ by tau g (d_b - d_a), the ordering margin gamma at g = gamma/tau
  config.loss.target_grading = 4.0
  config.loss.order_weight = 1.0  # lambda of the generic-to-specific ordering loss
  config.loss.order_gamma = 0.2  # gamma, margin per unit of descriptiveness gap
  config.loss.order_min_gap = 0.05  # delta, smallest descriptiveness gap that is ordered
  # Collapse: pos_sim - neg_sim below this at every log line of a quarter of the run (a warning
  # and train/collapsed = 1 in metrics.jsonl; ditm_jax/collapse.py).
  config.loss.collapse_gap = 0.01
  return config


def add_scale_fields(config):
  """The mesh fields and the objective's form, the same defaults in every config."""
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # devices on the data axis; -1 = all visible devices
  config.mesh.fsdp = False  # shard parameters and optimizer state over the data axis (FSDP)
  config.mesh.fsdp_min_size = 1 << 16  # FSDP: arrays with fewer elements stay replicated
  # The objective as a shard_map (ditm_jax/losses_sharded.py): each device forms its rows of
  # S against all-gathered captions, O(B^2 K / devices) logits per device. False: the plain
  # global form, gathers left to XLA. Same numbers. Measured: 8 CPU devices in one process,
  # within 4% of the plain step; 2 processes x 4 devices, 1.8x faster (8 collectives a step
  # instead of ~50); 33-43% less loss memory per device at B = 4,096 (ditm_jax.bench).
  config.loss.sharded = True
  return config


def shrink_to_tiny(config):
  """The CPU smoke-run sizes every config's `tiny` flag shares (seconds, same code paths)."""
  config.total_steps = 40
  config.batch_size = 32
  config.log_every_steps = 10
  config.eval_every_steps = 20
  config.checkpoint_every_steps = 20
  config.model.embed_dim = 64
  config.model.mlp_hidden = 32
  config.model.word_dim = 32
  # At these sizes the packed region tower's nn.cond costs more than the padding it skips
  # (configs/coco.py:text=bigru,tiny step: 0.031 s padded, 0.050 s packed).
  config.model.region_capacity = 0.0
  config.loss.relax_warmup_steps = 10
  # The hardest negative collapsed the triplet loss on a small world at every sum-over-negatives
  # phase (5-400 steps) and learning rate (2e-4-1e-3) tried; summing over negatives did not.
  config.loss.max_violation = False
  return config
