"""COCO (Karpathy splits) with VSE-infinity's recipe and the DITM terms (ditm_jax.recipes).

  python -m ditm_jax.main --config=configs/coco.py --mode=prepare \
      --config.data.raw_dir=RAW --config.data.dir=PREPARED
  python -m ditm_jax.main --config=configs/coco.py --workdir=DIR --config.data.dir=PREPARED
  arguments: text=bigru|bert, img=regions|pixels, variant=<baseline_vse|baseline_infonce|ditm|
             ditm_soft|no_relax|no_order>, tiny
"""

from ditm_jax import recipes


def get_config(arg=None):
  return recipes.real_data_config("coco", arg)
