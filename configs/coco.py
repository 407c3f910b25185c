"""COCO (Karpathy splits) with VSE-infinity's recipe and the DITM terms (configs/common.py).

  python -m ditm_jax.main --config=configs/coco.py --mode=prepare \
      --config.data.raw_dir=RAW --config.data.dir=PREPARED
  python -m ditm_jax.main --config=configs/coco.py --workdir=DIR --config.data.dir=PREPARED
  arguments: text=bigru|bert, img=regions|pixels, variant=<baseline_vse|baseline_infonce|ditm|
             ditm_soft|no_relax|no_order>, tiny
"""

import ml_collections

from configs import common


def get_config(arg=None):
  values, flags = common.parse_arg(arg, keys=("text", "img", "variant"), config="configs/coco.py")
  c = common.base_config()
  c.data.name = "coco"
  c.data.splits = "train,dev,testall"
  c.data.karpathy_json = "dataset_coco.json"
  c.data.karpathy_splits = ml_collections.ConfigDict(
      dict(train="train,restval", dev="val", testall="test"))
  c.data.train_shards = 128
  common.set_epochs(c, train_images=113287)  # Karpathy train + restval
  # COCO 1K (mean over five folds of 1,000 test images) and 5K (all 5,000); the best
  # checkpoint by the dev RSUM.
  c.evals = ml_collections.ConfigDict(dict(
      dev=dict(type="recall", split="dev", fold5=True),
      testall_1k=dict(type="recall", split="testall", fold5=True),
      testall_5k=dict(type="recall", split="testall")))

  # text=, img=, variant= and tiny (its smoke-run test split: testall)
  return common.apply_real_data_args(c, values, flags, tiny_test_split="testall")
