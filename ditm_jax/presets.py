"""Named loss variants (DESIGN §3). A variant is a set of config fields, never an `if`."""

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
