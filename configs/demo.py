"""The embedded demo (DESIGN §8): procedural scenes with graded captions, CPU-sized.

  python -m ditm_jax.main --config=configs/demo.py --workdir=workdirs/demo
  python -m ditm_jax.main --config=configs/demo.py:variant=baseline_vse --workdir=...
  arguments: variant=<baseline_vse|baseline_infonce|ditm|ditm_soft|no_relax|no_order>, tiny
"""

import ml_collections

from ditm_jax import presets
from ditm_jax.models import config_fields


def get_config(arg=None):
  values, flags = presets.parse_arg(arg, known_flags=("tiny",))
  unknown = set(values) - {"variant"}
  if unknown:
    raise ValueError(f"unknown configs/demo.py argument(s) {sorted(unknown)}; use variant=<name>")
  c = ml_collections.ConfigDict()
  c.seed = 0  # drives initialisation and the (seed, step) -> batch sampling
  c.total_steps = 800  # optimisation steps
  c.batch_size = 128  # global batch, in images (each with data.captions_per_image captions)
  c.dtype = "float32"  # compute dtype of activations: float32 | bfloat16 (params stay float32)
  c.log_every_steps = 100  # a train line in metrics.jsonl and on stdout
  c.eval_every_steps = 400  # evaluation cadence (and always at the end)
  c.checkpoint_every_steps = 200  # Orbax checkpoint cadence (and always at the end)
  c.keep_checkpoints = 2  # newest checkpoints kept (plus the best by RSUM)

  c.data = ml_collections.ConfigDict()
  c.data.name = "demo"
  c.data.world_seed = 0  # the procedural world (scenes, attribute embeddings)
  c.data.num_train = 4000  # training images (5 captions each)
  c.data.num_test = 1000  # test images: the standard 1K protocol
  c.data.num_dev = 0  # dev images for tuning (split 'dev', e.g. evals.demo_test.split='dev')
  c.data.feature_dim = 64  # F of the (num_regions, F) region features
  c.data.num_regions = 36
  c.data.noise = 0.5  # std of region feature noise
  c.data.captions_per_image = 2  # K captions drawn per image per step
  c.data.max_tokens = 32  # caption tokens kept
  c.data.region_drop = 0.2  # training-time region drop probability
  c.data.prefetch = 2  # batches prepared ahead

  c.descriptiveness = ml_collections.ConfigDict()
  c.descriptiveness.stop_words = "english"  # 'english' | None
  c.descriptiveness.normalize = "quantile"  # 'quantile' | 'minmax'

  c.model = ml_collections.ConfigDict()
  c.model.image = "regions"  # image tower: regions | vit (batch "pixels")
  c.model.text = "bigru"  # text tower: bigru | bert (WordPiece ids, model.bert_path)
  c.model.embed_dim = 128  # D of the joint space
  c.model.mlp_hidden = 128  # hidden width of the region MLP residual
  c.model.word_dim = 64  # word embedding width (bigru)
  config_fields.add_model_fields(c)  # bert_path, vit_path, *_lr_mult, freeze_*, data.image_size

  # beta ramps up over one epoch of the 4,000 training images. The triplet loss sums over
  # negatives throughout: the hardest negative collapsed it after a phase of one epoch, and
  # on one seed of three after a quarter of the run (README, "Collapse").
  presets.add_loss_fields(c, relax_warmup_steps=4000 // 128, sum_violation_steps=4000 // 128,
                          max_violation=False)
  presets.add_scale_fields(c)  # mesh.data, mesh.fsdp, mesh.fsdp_min_size, loss.sharded

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3  # peak AdamW learning rate
  c.optim.warmup_steps = 100  # linear warm-up, then cosine decay to 0 at total_steps
  c.optim.weight_decay = 1e-4
  c.optim.grad_clip = 2.0  # global gradient-norm clip

  # Evaluations by name, types in ditm_jax/evaluation/evaluators.py; metrics.jsonl keys are
  # "<name>/<metric>". Each: type, split, every_steps (default eval_every_steps, 0 = only at the
  # end), optional (True: a failure is logged and the run goes on).
  c.evals = ml_collections.ConfigDict()
  c.evals.demo_test = ml_collections.ConfigDict(dict(type="demo", split="test"))
  # .npy embeddings of the test split in DIR/export/ at the end (and with --mode=export).
  c.evals.export = ml_collections.ConfigDict(dict(type="export", split="test", every_steps=0))

  presets.apply_variant(c, values.get("variant", "ditm"))
  if "tiny" in flags:  # seconds-long smoke run, same code paths
    presets.shrink_to_tiny(c)
    c.data.num_train = 400
    c.data.num_test = 100
    c.optim.warmup_steps = 5
  return c
