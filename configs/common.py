"""The one config base: every field, its default and what it means. Configs override it.

`configs/demo.py`, `configs/coco.py` and `configs/f30k.py` start from `base_config()` (the
VSE-infinity recipe on precomputed regions with the `ditm` objective) and set what differs,
top to bottom. A variant (`variant=<name>`) is a set of fields (`VARIANTS`), never an `if`.
"""

import math

import ml_collections

# Every variant sets the same fields: the matching loss, the two uses of descriptiveness
# (relaxation: beta and its budget rho; ordering: graded targets g and the hinge lambda) and K.
# The DITM presets were chosen on dev splits by a study of variants x 3 seeds on two worlds
# (configs/README.md).
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
TEXT = ("bigru", "bert")
# img=<name> -> (model.image, data.format)
IMAGE = {"regions": ("regions", "precomp"), "pixels": ("vit", "karpathy")}


def base_config():
  """Every field with its default (the VSE-infinity recipe, `ditm` objective, COCO sizes)."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # drives initialisation, data order, caption choice and augmentation
  c.variant = "ditm"  # the preset the loss fields came from (VARIANTS); set by apply_variant
  c.total_steps = 25 * 886  # optimisation steps (set_epochs: 25 epochs)
  c.batch_size = 128  # global batch, in images (each with data.captions_per_image captions)
  c.dtype = "float32"  # compute dtype of activations: float32 | bfloat16 (params stay float32)
  c.log_every_steps = 100  # a train line in metrics.jsonl and on stdout
  c.eval_every_steps = 886  # evaluation cadence (and always at the end)
  c.checkpoint_every_steps = 500  # Orbax checkpoint cadence (and always at the end)
  c.keep_checkpoints = 2  # newest checkpoints kept (plus the best by the first RSUM)
  c.export_at_end = True  # .npy embeddings of every evaluated split after training

  c.data = ml_collections.ConfigDict()
  c.data.name = "coco"  # 'demo' (generated) | 'coco' | 'f30k' | 'prepared' (data.dir)
  c.data.captions_per_image = 2  # K captions drawn per image per step (set by the variant)
  c.data.max_tokens = 32  # caption tokens kept (words for bigru, WordPieces for bert)
  c.data.region_drop = 0.2  # training: probability of dropping each region
  c.data.prefetch = 2  # batches prepared ahead
  c.data.feature_dim = 2048  # F of the (num_regions, F) region features
  c.data.num_regions = 36  # R, regions per image
  c.data.image_size = 224  # model.image='vit': side of the square RGB input (= the checkpoint's)
  # Prepared data (coco, f30k, prepared).
  c.data.dir = ""  # the prepared directory: written by --mode=prepare, read by training
  c.data.raw_dir = ""  # prepare's input: precomputed files, Karpathy JSON + images, or TFDS dir
  c.data.format = "precomp"  # raw layout: 'precomp' | 'karpathy' | 'tfds' (COCO only)
  c.data.splits = "train,dev,testall"  # comma-separated split names prepared
  c.data.train_split = "train"  # the split trained on; descriptiveness and vocab fit on it
  c.data.karpathy_json = "dataset_coco.json"  # 'karpathy': split file in raw_dir
  # 'karpathy' and 'tfds': our split -> their splits
  c.data.karpathy_splits = ml_collections.ConfigDict(
      dict(train="train,restval", dev="val", testall="test"))
  c.data.image_dir = ""  # 'karpathy': image root (filepath/filename below it); '' = raw_dir
  c.data.token_drop = 0.2  # training: probability of deleting or masking each token (half each)
  c.data.shuffle_window = 2048  # images permuted together (host memory: window x image record)
  c.data.train_shards = 128  # TFRecord files of the train split (>= hosts)
  # The generated demo world (data.name='demo').
  c.data.world_seed = 0  # the procedural world (scenes, attribute embeddings)
  c.data.num_train = 4000  # training images (5 captions each)
  c.data.num_test = 1000  # test images: the standard 1K protocol
  c.data.num_dev = 0  # dev images for tuning (split 'dev', e.g. evals.demo_test.split='dev')
  c.data.noise = 0.5  # std of region feature noise

  c.descriptiveness = ml_collections.ConfigDict()
  c.descriptiveness.stop_words = "english"  # 'english' | None
  c.descriptiveness.normalize = "quantile"  # 'quantile' | 'minmax'

  c.model = ml_collections.ConfigDict()
  c.model.image = "regions"  # image tower: 'regions' (precomputed) | 'vit' (pixels)
  c.model.text = "bigru"  # text tower: 'bigru' | 'bert' (needs model.bert_path)
  c.model.embed_dim = 1024  # D of the joint space
  c.model.mlp_hidden = 512  # hidden width of the region MLP residual
  c.model.word_dim = 300  # word embedding width (bigru)
  # Pretrained backbones: a checkpoint directory (config.json + model.safetensors, plus
  # vocab.txt for BERT, preprocessor_config.json for ViT) or, online, a hub name.
  c.model.bert_path = ""  # model.text='bert': BERT checkpoint dir or hub name
  c.model.text_lr_mult = 0.1  # learning rate of the pretrained text backbone, x optim.lr
  c.model.freeze_text_backbone = False  # keep the pretrained text backbone fixed
  c.model.vit_path = ""  # model.image='vit': ViT checkpoint dir or hub name
  c.model.image_lr_mult = 0.1  # learning rate of the pretrained image backbone, x optim.lr
  c.model.freeze_image_backbone = False  # keep the pretrained image backbone fixed
  # Packed towers (models/packing.py, speed only): run the row-wise layers on the valid
  # positions packed into this fraction of the B x L (or B x R) positions; 0 = the plain tower.
  # A batch with more valid positions runs padded, so results never depend on it.
  c.model.text_token_capacity = 0.75  # model.text='bert': BERT on the packed valid tokens
  c.model.region_capacity = 0.85  # model.image='regions': linear + MLP on the kept regions
  # Share of steps allowed to overflow the packing buffers: capacities above 0 are then
  # derived from the training data (data/packing_stats.py); 0 keeps the fractions as set.
  c.model.packing_overflow = 1e-3

  c.loss = ml_collections.ConfigDict()  # DESIGN §3 and ditm_jax/losses.py
  c.loss.matching = "infonce"  # 'infonce' | 'triplet'
  c.loss.temperature = 0.05  # tau of the soft-target InfoNCE
  c.loss.learn_temperature = False  # learn log(tau), clipped to [0.01, 1]
  c.loss.margin = 0.2  # alpha of the triplet loss
  c.loss.max_violation = True  # triplet: hardest negative (True) or sum over negatives
  c.loss.sum_violation_steps = 886  # triplet: sum over negatives this many steps first
  c.loss.relax_beta = 0.5  # beta, strength of false-negative relaxation
  c.loss.relax_temp = 0.05  # tau_r of the relaxation sigmoid
  c.loss.relax_warmup_steps = 886  # beta rises linearly from 0 over these steps
  # rho, infonce: a row's relaxed target mass is capped at rho x its positive mass (inf: no cap)
  c.loss.relax_budget = 0.2
  # g, infonce: image->text targets of an image's own captions ~ exp(g d); at the optimum two
  # captions' similarities differ by tau g (d_b - d_a), the ordering margin gamma at g = gamma/tau
  c.loss.target_grading = 4.0
  c.loss.order_weight = 1.0  # lambda of the generic-to-specific ordering loss
  c.loss.order_gamma = 0.2  # gamma, margin per unit of descriptiveness gap
  c.loss.order_min_gap = 0.05  # delta, smallest descriptiveness gap that is ordered
  # Collapse: pos_sim - neg_sim below this at every log line of a quarter of the run (a warning
  # and train/collapsed = 1 in metrics.jsonl; ditm_jax/collapse.py).
  c.loss.collapse_gap = 0.01
  # The objective as a shard_map (losses_sharded.py): each device forms its rows of S against
  # all-gathered captions, O(B^2 K / devices) logits per device. False: the plain global form,
  # gathers left to XLA. Same numbers.
  c.loss.sharded = True

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # devices on the data axis; -1 = all visible devices
  c.mesh.fsdp = False  # shard parameters and optimizer state over the data axis (FSDP)
  c.mesh.fsdp_min_size = 1 << 16  # FSDP: arrays with fewer elements stay replicated

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 5e-4  # peak AdamW learning rate (pretrained backbones x model.*_lr_mult)
  c.optim.schedule = "step"  # 'step' (x decay_factor at decay_steps) | 'cosine' (to 0 at the end)
  c.optim.decay_steps = (15 * 886,)  # 'step': steps where the rate is multiplied by decay_factor
  c.optim.decay_factor = 0.1  # 'step': the rate is multiplied by this at each decay step
  c.optim.warmup_steps = 0  # linear warm-up steps before the schedule
  c.optim.weight_decay = 1e-4  # AdamW decoupled weight decay
  c.optim.grad_clip = 2.0  # global gradient-norm clip

  # Evaluations by name, types in ditm_jax/evaluation/evaluators.py; metrics.jsonl keys are
  # "<name>/<metric>". Each: type, split, every_steps (default eval_every_steps, 0 = only at
  # the end), optional (True: a failure is logged and the run goes on). The best checkpoint is
  # chosen by the first RSUM in name order.
  c.evals = ml_collections.ConfigDict()
  return c


def set_epochs(c, train_images, epochs=25, decay_epoch=15):
  """VSE-infinity's schedule in steps of `c.batch_size`: `epochs` epochs, the rate x0.1 from
  `decay_epoch`, evaluation every epoch, and one epoch of sum over negatives and of beta ramp."""
  epoch = math.ceil(train_images / c.batch_size)
  c.total_steps = epochs * epoch
  c.eval_every_steps = epoch
  c.optim.decay_steps = (decay_epoch * epoch,)
  c.loss.sum_violation_steps = epoch
  c.loss.relax_warmup_steps = epoch
  return c


def set_towers(c, text="bigru", img="regions"):
  """`text=bigru|bert` and `img=regions|pixels`: the towers and the raw data they read."""
  if text not in TEXT:
    raise ValueError(f"text={text!r} is not known; use one of {TEXT}")
  if img not in IMAGE:
    raise ValueError(f"img={img!r} is not known; use one of {tuple(IMAGE)}")
  c.model.text = text
  c.data.max_tokens = 32 if text == "bigru" else 40
  c.model.image, c.data.format = IMAGE[img]
  return c


def apply_variant(c, name):
  """Sets the loss fields and captions per image of variant `name` on `c`."""
  if name not in VARIANTS:
    raise ValueError(f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}")
  c.variant = name
  for field, value in VARIANTS[name].items():
    if field == "k":
      c.data.captions_per_image = value
    else:
      c.loss[field] = value
  return c


def shrink_to_tiny(c):
  """The CPU smoke-run sizes every config's `tiny` flag shares (seconds, same code paths)."""
  c.total_steps = 40
  c.batch_size = 32
  c.log_every_steps = 10
  c.eval_every_steps = 20
  c.checkpoint_every_steps = 20
  c.model.embed_dim = 64
  c.model.mlp_hidden = 32
  c.model.word_dim = 32
  c.model.region_capacity = 0.0  # at these sizes packing costs more than the padding it skips
  c.loss.relax_warmup_steps = 10
  # The hardest negative collapsed the triplet loss on small worlds (configs/README.md).
  c.loss.max_violation = False
  return c


def apply_real_data_args(c, values, flags, tiny_test_split):
  """The towers (`text=`, `img=`), the variant, and with `tiny` the sizes of
  `shrink_real_data_to_tiny`, from a real-data config's parsed arguments."""
  set_towers(c, values.get("text", "bigru"), values.get("img", "regions"))
  apply_variant(c, values.get("variant", "ditm"))
  if "tiny" in flags:  # seconds-long smoke run on a CPU, same data formats
    shrink_real_data_to_tiny(c, tiny_test_split)
  return c


def shrink_real_data_to_tiny(c, test_split):
  """`shrink_to_tiny` for prepared data: few shards, a small shuffle window, one small test."""
  shrink_to_tiny(c)
  c.export_at_end = False
  c.data.train_shards = 4
  c.data.shuffle_window = 256
  c.optim.lr = 1e-3
  c.optim.decay_steps = (30,)
  c.evals = ml_collections.ConfigDict({test_split: dict(type="recall", split=test_split)})
  return c


def parse_arg(arg, keys, flags=("tiny",), config="the config"):
  """'variant=ditm,tiny' -> (dict of key=value, set of flags); unknown parts are an error."""
  values, found = {}, set()
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    key, sep, value = part.partition("=")
    key = key.strip()
    if sep and key in keys:
      values[key] = value.strip()
    elif not sep and part in flags:
      found.add(part)
    else:
      raise ValueError(f"unknown {config} argument {part!r}; use "
                       + ", ".join([f"{k}=<value>" for k in keys] + list(flags)))
  return values, found


# Sub-dicts whose keys each config chooses (its evaluations, its split names).
FREE = ("evals", "data.karpathy_splits")


def fields(config):
  """The dotted names of `config`'s fields, less those inside FREE."""
  out = set()

  def walk(prefix, node):
    for key, value in node.items():
      name = prefix + key
      if name in FREE:
        continue
      if isinstance(value, ml_collections.ConfigDict):
        walk(name + ".", value)
      else:
        out.add(name)
  walk("", config)
  return out


def missing_fields(config):
  """The base fields `config` lacks (a config not built on `base_config()`), sorted."""
  return sorted(fields(base_config()) - fields(config))

