"""Named loss variants (DESIGN §3) and the config pieces every config shares.

A variant is a set of config fields, never an `if`.
"""

import ml_collections

VARIANTS = {
    # VSE-infinity: hardest-negative triplet loss, binary supervision, one caption per image.
    "baseline_vse": dict(matching="triplet", relax_beta=0.0, order_weight=0.0, k=1),
    # Plain InfoNCE, binary supervision, one caption per image.
    "baseline_infonce": dict(matching="infonce", relax_beta=0.0, order_weight=0.0, k=1),
    # DITM: triplet with false-negative relaxation and generic-to-specific ordering.
    "ditm": dict(matching="triplet", relax_beta=0.5, order_weight=1.0, k=2),
    # DITM with soft InfoNCE targets.
    "ditm_soft": dict(matching="infonce", relax_beta=0.5, order_weight=1.0, k=2),
    # Ablations of `ditm`.
    "no_relax": dict(matching="triplet", relax_beta=0.0, order_weight=1.0, k=2),
    "no_order": dict(matching="triplet", relax_beta=0.5, order_weight=0.0, k=2),
}


def apply_variant(config, name):
  """Sets the loss fields and captions per image of variant `name` on `config`."""
  if name not in VARIANTS:
    raise ValueError(f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}")
  v = VARIANTS[name]
  config.variant = name
  config.loss.matching = v["matching"]
  config.loss.relax_beta = v["relax_beta"]
  config.loss.order_weight = v["order_weight"]
  config.data.captions_per_image = v["k"]
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


def add_loss_fields(config, warmup_steps):
  """The objective's fields (DESIGN §3) with the DITM defaults; `variant=` then picks the terms.

  `warmup_steps` (about one epoch) is both the sum-over-negatives phase of the triplet loss
  and the linear ramp of beta.
  """
  config.loss = ml_collections.ConfigDict()
  config.loss.matching = "triplet"  # 'triplet' | 'infonce'
  config.loss.temperature = 0.05  # tau of the soft-target InfoNCE
  config.loss.learn_temperature = False  # learn log(tau), clipped to [0.01, 1]
  config.loss.margin = 0.2  # alpha of the triplet loss
  config.loss.max_violation = True  # hardest negative (True) or sum over negatives
  config.loss.sum_violation_steps = warmup_steps  # sum over negatives for this many steps first
  config.loss.relax_beta = 0.5  # beta, strength of false-negative relaxation
  config.loss.relax_temp = 0.05  # tau_r of the relaxation sigmoid
  config.loss.relax_warmup_steps = warmup_steps  # beta rises linearly from 0 over these steps
  config.loss.relax_budget = float("inf")  # rho: relaxed target mass <= rho x positive mass
  config.loss.target_grading = 0.0  # g: infonce i2t targets of an image's captions ~ exp(g d)
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
  return config
