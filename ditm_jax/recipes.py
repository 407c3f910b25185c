"""Configs for COCO and Flickr30K: VSE-infinity's recipe (DESIGN §10) plus the DITM terms.

`configs/coco.py` and `configs/f30k.py` are `real_data_config('coco' | 'f30k', arg)`; `arg` is
a comma-separated string of `text=bigru|bert`, `img=regions|pixels`, `variant=<preset>` and
the flag `tiny` (CPU-sized widths, batch and steps, same data formats).
"""

import math

import ml_collections

from ditm_jax import presets
from ditm_jax.models import config_fields

# name -> facts of the data set (Karpathy splits; the VSE-infinity / SCAN precomputed files).
DATASETS = {
    "coco": dict(
        train_images=113287,  # Karpathy train + restval
        splits="train,dev,testall",
        karpathy_json="dataset_coco.json",
        karpathy_splits=dict(train="train,restval", dev="val", testall="test"),
        train_shards=128,
        # COCO 5K (all 5,000 test images) and COCO 1K (mean over five folds of 1,000).
        evals=dict(dev=dict(type="recall", split="dev", fold5=True),
                   testall_1k=dict(type="recall", split="testall", fold5=True),
                   testall_5k=dict(type="recall", split="testall"))),
    "f30k": dict(
        train_images=29000,
        splits="train,dev,test",
        karpathy_json="dataset_flickr30k.json",
        karpathy_splits=dict(train="train", dev="val", test="test"),
        train_shards=32,
        evals=dict(dev=dict(type="recall", split="dev"),
                   test=dict(type="recall", split="test"))),
}
TEXT = ("bigru", "bert")
IMAGE = {"regions": ("regions", "precomp"), "pixels": ("vit", "karpathy")}


def real_data_config(dataset, arg=None):
  """The config of `dataset` ('coco' or 'f30k') for the string argument `arg`."""
  values, flags = presets.parse_arg(arg, known_flags=("tiny",))
  unknown = set(values) - {"variant", "text", "img"}
  if unknown:
    raise ValueError(f"unknown configs/{dataset}.py argument(s) {sorted(unknown)}; use "
                     "text=bigru|bert, img=regions|pixels, variant=<name>, tiny")
  text, img = values.get("text", "bigru"), values.get("img", "regions")
  if text not in TEXT:
    raise ValueError(f"text={text!r} is not known; use one of {TEXT}")
  if img not in IMAGE:
    raise ValueError(f"img={img!r} is not known; use one of {tuple(IMAGE)}")
  facts = DATASETS[dataset]
  batch = 128
  epoch = math.ceil(facts["train_images"] / batch)  # steps per epoch

  c = ml_collections.ConfigDict()
  c.seed = 0  # drives initialisation, data order, caption choice and augmentation
  c.total_steps = 25 * epoch  # 25 epochs
  c.batch_size = batch  # global batch, in images (each with data.captions_per_image captions)
  c.dtype = "float32"  # compute dtype of activations: float32 | bfloat16 (params stay float32)
  c.log_every_steps = 100
  c.eval_every_steps = epoch  # evaluation cadence (and always at the end)
  c.checkpoint_every_steps = 500  # Orbax checkpoint cadence (and always at the end)
  c.keep_checkpoints = 2  # newest checkpoints kept (plus the best by the dev RSUM)
  c.export_at_end = True  # write .npy embeddings of every eval split after training

  c.data = ml_collections.ConfigDict()
  c.data.name = dataset  # prepared data (ditm_jax.data.prepare) of this data set
  c.data.dir = ""  # the prepared directory: written by --mode=prepare, read by training
  c.data.raw_dir = ""  # prepare's input: precomputed files, Karpathy JSON + images, or TFDS dir
  c.data.format = IMAGE[img][1]  # raw layout: 'precomp' | 'karpathy' | 'tfds' (COCO only)
  c.data.splits = facts["splits"]  # comma-separated split names prepared
  c.data.train_split = "train"  # the split trained on; descriptiveness and vocab fit on it
  c.data.karpathy_json = facts["karpathy_json"]  # 'karpathy': split file in raw_dir
  c.data.karpathy_splits = ml_collections.ConfigDict(facts["karpathy_splits"])  # split -> theirs
  c.data.image_dir = ""  # 'karpathy': image root (filepath/filename below it); '' = raw_dir
  c.data.feature_dim = 2048  # F of the precomputed (num_regions, F) region features
  c.data.num_regions = 36  # R, regions per image
  c.data.captions_per_image = 2  # K captions drawn per image per step (set by the variant)
  c.data.max_tokens = 32 if text == "bigru" else 40  # caption tokens kept (words or WordPieces)
  c.data.region_drop = 0.2  # training: probability of dropping each region
  c.data.token_drop = 0.2  # training: probability of deleting or masking each token (half each)
  c.data.shuffle_window = 2048  # images permuted together (host memory: window x image record)
  c.data.train_shards = facts["train_shards"]  # TFRecord files of the train split (>= hosts)
  c.data.prefetch = 2  # batches prepared ahead

  c.descriptiveness = ml_collections.ConfigDict()
  c.descriptiveness.stop_words = "english"  # 'english' | None
  c.descriptiveness.normalize = "quantile"  # 'quantile' | 'minmax'

  c.model = ml_collections.ConfigDict()
  c.model.image = IMAGE[img][0]  # image tower: 'regions' (precomputed) | 'vit' (pixels)
  c.model.text = text  # text tower: 'bigru' | 'bert' (needs model.bert_path)
  c.model.embed_dim = 1024  # D of the joint space
  c.model.mlp_hidden = 512  # hidden width of the region MLP residual
  # Region linear + MLP on the kept regions only (evaluation keeps all and runs padded); the
  # trainer sizes the buffer from data.region_drop (model.packing_overflow): 0.819 of B x R rows
  # at 128 images per device, 0.861 at 16.
  c.model.region_capacity = 0.85
  c.model.word_dim = 300  # word embedding width (bigru)
  config_fields.add_model_fields(c)  # bert_path, vit_path, lr multipliers (0.1), image_size

  presets.add_loss_fields(c, relax_warmup_steps=epoch, sum_violation_steps=epoch)  # VSE-inf.
  presets.add_scale_fields(c)  # mesh.data, mesh.fsdp, mesh.fsdp_min_size, loss.sharded

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 5e-4  # AdamW learning rate (pretrained backbones x model.*_lr_mult)
  c.optim.schedule = "step"  # 'step' (x decay_factor at decay_steps) | 'cosine'
  c.optim.decay_steps = (15 * epoch,)  # steps where the rate is multiplied by decay_factor
  c.optim.decay_factor = 0.1
  c.optim.warmup_steps = 0  # linear warm-up steps before the schedule
  c.optim.weight_decay = 1e-4
  c.optim.grad_clip = 2.0  # global gradient-norm clip

  # Evaluations by name: metrics.jsonl keys are "<name>/<metric>"; the best checkpoint is
  # chosen by the first RSUM in name order (the dev split).
  c.evals = ml_collections.ConfigDict({k: dict(v) for k, v in facts["evals"].items()})

  presets.apply_variant(c, values.get("variant", "ditm"))
  if "tiny" in flags:  # seconds-long smoke run on a CPU, same data formats
    presets.shrink_to_tiny(c)
    c.export_at_end = False
    c.data.train_shards = 4
    c.data.shuffle_window = 256
    c.optim.lr = 1e-3
    c.optim.decay_steps = (30,)
    test = facts["splits"].split(",")[-1]  # small splits: no 1K folds
    c.evals = ml_collections.ConfigDict({test: dict(type="recall", split=test)})
  return c
