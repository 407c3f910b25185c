"""Flickr30K (Karpathy splits) with VSE-infinity's recipe and the DITM terms (configs/common.py).

  python -m ditm_jax.main --config=configs/f30k.py --mode=prepare \
      --config.data.raw_dir=RAW --config.data.dir=PREPARED
  python -m ditm_jax.main --config=configs/f30k.py --workdir=DIR --config.data.dir=PREPARED
  arguments: text=bigru|bert, img=regions|pixels, variant=<baseline_vse|baseline_infonce|ditm|
             ditm_soft|no_relax|no_order>, tiny
"""

import ml_collections

from configs import common


def get_config(arg=None):
  values, flags = common.parse_arg(arg, keys=("text", "img", "variant"), config="configs/f30k.py")
  c = common.base_config()
  c.data.name = "f30k"
  c.data.splits = "train,dev,test"
  c.data.karpathy_json = "dataset_flickr30k.json"
  c.data.karpathy_splits = ml_collections.ConfigDict(dict(train="train", dev="val", test="test"))
  c.data.train_shards = 32
  common.set_epochs(c, train_images=29000)
  # Flickr30K's 1K test images; the best checkpoint by the dev RSUM.
  c.evals = ml_collections.ConfigDict(dict(dev=dict(type="recall", split="dev"),
                                           test=dict(type="recall", split="test")))

  # text=, img=, variant= and tiny (its smoke-run test split: test)
  return common.apply_real_data_args(c, values, flags, tiny_test_split="test")
