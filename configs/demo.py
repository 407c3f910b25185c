"""The embedded demo (DESIGN §8): procedural scenes with graded captions, CPU-sized.

  python -m ditm_jax.main --config=configs/demo.py --workdir=workdirs/demo
  python -m ditm_jax.main --config=configs/demo.py:variant=baseline_vse --workdir=...
  arguments: variant=<baseline_vse|baseline_infonce|ditm|ditm_soft|no_relax|no_order>, tiny
"""

import ml_collections

from configs import common


def get_config(arg=None):
  values, flags = common.parse_arg(arg, keys=("variant",), config="configs/demo.py")
  c = common.base_config()
  c.total_steps = 800
  c.eval_every_steps = 400
  c.checkpoint_every_steps = 200
  c.export_at_end = False  # the export evaluator below writes the test split's embeddings

  c.data.name = "demo"  # generated from data.world_seed; no prepared directory
  c.data.feature_dim = 64

  c.model.embed_dim = 128
  c.model.mlp_hidden = 128
  c.model.word_dim = 64
  c.model.region_capacity = 0.0  # plain towers: packing does not pay at these sizes

  # beta ramps up over one epoch of the 4,000 training images. The triplet loss sums over
  # negatives throughout: the hardest negative collapsed it (configs/README.md, "Collapse").
  c.loss.relax_warmup_steps = 4000 // 128
  c.loss.sum_violation_steps = 4000 // 128
  c.loss.max_violation = False

  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 100

  c.evals = ml_collections.ConfigDict()
  c.evals.demo_test = ml_collections.ConfigDict(dict(type="demo", split="test"))
  # .npy embeddings of the test split in DIR/export/ at the end (and with --mode=export).
  c.evals.export = ml_collections.ConfigDict(dict(type="export", split="test", every_steps=0))

  common.apply_variant(c, values.get("variant", "ditm"))
  if "tiny" in flags:  # seconds-long smoke run, same code paths
    common.shrink_to_tiny(c)
    c.data.num_train = 400
    c.data.num_test = 100
    c.optim.warmup_steps = 5
  return c
