"""Evaluator types, chosen by config: `config.evals.<name> = dict(type=..., split=..., ...)`.

Every evaluator is a function `(embedder, spec) -> {metric: float}`, registered by type
name in `EVALUATORS`; results are recorded as `"<name>/<metric>"`. Fields of every spec:
- `type`: one of `EVALUATORS`; `split`: a split of the data (`Data.splits` of `data/datasets.py`);
- `every_steps`: training cadence (default `config.eval_every_steps`; 0 = only at the end).
  Every evaluator also runs at the last step and in `--mode=eval` (exports: `--mode=export`);
- `optional`: when True, a failure (including a split the data lacks) is logged and the run
  goes on; otherwise it stops the run with the error.

Types and their own fields:
- `recall`: R@1/5/10, medr, meanr, rsum (DESIGN §7, §10), ranked on device in chunks.
  `fold5=True` is COCO 1K (mean over five folds of 1000 images); False is COCO 5K or
  Flickr30K 1K. Where the split carries graded truth (a prepared split whose raw data had
  `{split}_relevance.npy`), and not with fold5, it adds the `demo` metrics.
- `demo`: standard recalls plus graded metrics from the ground truth (the demo's, or a
  prepared split's): `i2t_ndcg10`, `t2i_ndcg10`, `order_tau` (similarity vs descriptiveness
  over each image's true captions), `grade_tau` (similarity vs grade over its own captions).
  These need the full similarity matrix: test-sized splits only.
- `cxc`: Crisscrossed Captions recalls and correlations (`evaluation/cxc.py`) on the COCO
  5K test split, whose rows must follow `coco/testall_ids.txt`. `data_dir` holds
  `cxc/{sits,sts,sis}_test.csv`, `cxc/coco_test_ids.npy` and `coco/testall_ids.txt`;
  `match_ids` (default True) checks the split's image ids against that file.
- `hierarcaps`: HierarCaps precision, recall and d_corr (`evaluation/hierarcaps.py`).
  `data_dir` holds `hierarcaps/hierarcaps_test.csv`; `split` must contain the 1,000
  HierarCaps test images with their COCO ids as image ids (a pixel split built from
  `hierarcaps/test_imgs/`, or features extracted for them). The demo and the
  region-feature COCO data have no such split: list it there with `optional=True`.
  Texts go through the model's text tower; the root is the embedding of the empty text
  (for the BiGRU a single `<unk>` token, for BERT `[CLS] [SEP]`).
- `export`: writes the split's embeddings to `DIR/export/` (`evaluation/export.py`); no
  metrics.

An *embedder* gives an evaluator the model at fixed parameters: `config`, `data`, `step`,
`workdir`, `is_main` (whether this process writes files), `text_preprocessing` (a str),
`split(name)`, `embed_images(name)`, `embed_captions(name)`, `embed_texts(list_of_str)`
(float32 numpy arrays, L2-normalised rows) and `memo(key, fn)`, a cache for values that do
not depend on the parameters (annotations, ground truth).
"""

import json
import os
import re

from absl import logging
import numpy as np

from ditm_jax.evaluation import cxc
from ditm_jax.evaluation import export as export_lib
from ditm_jax.evaluation import graded
from ditm_jax.evaluation import hierarcaps
from ditm_jax.evaluation import recall

EVALUATORS = {}


def register(name):
  """Decorator: adds an evaluator function to `EVALUATORS` under `name`."""
  def add(fn):
    EVALUATORS[name] = fn
    return fn
  return add


def _data_dir(spec, name):
  path = spec.get("data_dir")
  if not path:
    raise ValueError(f"evaluation {name!r} (type {spec['type']!r}) needs a data_dir field: the "
                     "folder with the annotation files, e.g. data_dir='/data/annotations'")
  return path


@register("recall")
def recall_eval(embedder, spec):
  """Standard recalls; plus the graded metrics where the split carries graded truth."""
  name = spec["split"]
  fold5 = bool(spec.get("fold5", False))
  if name in embedder.data.relevance and not fold5:
    return demo_eval(embedder, spec)
  split = embedder.split(name)
  return recall.recall_from_embeddings(
      embedder.embed_images(name), embedder.embed_captions(name),
      captions_per_image=split.captions_per_image, fold5=fold5)


def demo_metrics(img, txt, captions_per_image, relevance, desc, k=10):
  """Standard recalls plus graded metrics: nDCG@k both ways, order tau and grade tau.

  `order_tau` compares similarity with descriptiveness over each image's true captions;
  `grade_tau` compares it with the ground-truth grade over each image's own captions.
  """
  out = recall.recall_from_embeddings(img, txt, captions_per_image=captions_per_image)
  sims = np.asarray(img, np.float32) @ np.asarray(txt, np.float32).T  # test-sized splits only
  out[f"i2t_ndcg{k}"] = graded.ndcg_at_k(sims, relevance, k=k)
  out[f"t2i_ndcg{k}"] = graded.ndcg_at_k(sims.T, relevance.T, k=k)
  out["order_tau"] = graded.order_tau(sims, relevance > 0, desc)
  out["grade_tau"] = graded.own_grade_tau(sims, relevance, captions_per_image)
  return out


@register("demo")
def demo_eval(embedder, spec):
  name = spec["split"]
  split = embedder.split(name)
  if name not in embedder.data.relevance:
    raise ValueError(f"split {name!r} has no graded ground truth; the 'demo' evaluator runs "
                     "on the demo data and on prepared splits with {split}_relevance.npy only "
                     "(use type='recall' elsewhere)")
  relevance = embedder.memo(("relevance", name), embedder.data.relevance[name])
  return demo_metrics(embedder.embed_images(name), embedder.embed_captions(name),
                      split.captions_per_image, relevance, split.desc)


def _check_cxc_order(split, split_name, data_dir):
  path = os.path.join(data_dir, "coco", "testall_ids.txt")
  ids = np.loadtxt(path, dtype=np.int64, ndmin=1)[::5]
  if split.image_ids.shape != ids.shape or not np.array_equal(split.image_ids, ids):
    bad = (f"{split.num_images} images" if split.image_ids.shape != ids.shape else
           f"row {int(np.argmax(split.image_ids != ids))} differs")
    raise ValueError(f"split {split_name!r} is not the COCO 5K test in the order of {path} "
                     f"({bad}); evaluate CxC on that split, or set match_ids=False when its "
                     "image ids are not COCO ids but its rows follow that order")


@register("cxc")
def cxc_eval(embedder, spec):
  name = spec["split"]
  data_dir = _data_dir(spec, "cxc")
  split = embedder.split(name)
  if spec.get("match_ids", True):
    embedder.memo(("cxc_order", name, data_dir),
                  lambda: _check_cxc_order(split, name, data_dir))
  positives = embedder.memo(("cxc", data_dir), lambda: cxc.load_positives(data_dir))
  return cxc.cxc_metrics(embedder.embed_images(name), embedder.embed_captions(name), positives)


def coco_image_id(file_name):
  """COCO image id from a file name such as `COCO_val2014_000000301718.jpg`."""
  match = re.search(r"(\d+)\.\w+$", file_name)
  if not match:
    raise ValueError(f"no COCO image id in file name {file_name!r}")
  return int(match.group(1))


def hierarcaps_rows(image_ids, names, split_name):
  """Rows of `image_ids` (a split's) holding the HierarCaps images `names`, in CSV order."""
  row_of = {int(i): r for r, i in enumerate(image_ids)}
  wanted = [coco_image_id(n) for n in names]
  missing = [i for i in wanted if i not in row_of]
  if missing:
    raise ValueError(
        f"split {split_name!r} lacks {len(missing)} of the {len(wanted)} HierarCaps test images "
        f"(e.g. COCO id {missing[0]}); the hierarcaps evaluator needs a split of those images "
        "with their COCO ids as image ids (region-feature and demo data have none: mark the "
        "evaluator optional=True there)")
  return np.array([row_of[i] for i in wanted], np.int64)


@register("hierarcaps")
def hierarcaps_eval(embedder, spec):
  name = spec["split"]
  csv_path = os.path.join(_data_dir(spec, "hierarcaps"), "hierarcaps", "hierarcaps_test.csv")
  names, chains = embedder.memo(("hierarcaps", csv_path), lambda: hierarcaps.load_test(csv_path))
  rows = hierarcaps_rows(embedder.split(name).image_ids, names, name)
  pool, index = hierarcaps.build_pool(chains)
  pool_emb = embedder.embed_texts(pool)
  root = embedder.embed_texts([""])[0]
  return hierarcaps.hierarcaps_metrics(embedder.embed_images(name)[rows], pool_emb[index],
                                       root, chains)


@register("export")
def export_eval(embedder, spec):
  name = spec["split"]
  split = embedder.split(name)
  img, txt = embedder.embed_images(name), embedder.embed_captions(name)
  if embedder.is_main:
    meta = {"step": int(embedder.step), "config_hash": export_lib.config_hash(embedder.config),
            "text_preprocessing": embedder.text_preprocessing,
            "config": json.loads(embedder.config.to_json())}
    out_dir = os.path.join(embedder.workdir, "export")
    export_lib.write(out_dir, name, img, txt, split.image_ids, split.captions,
                     split.captions_per_image, meta)
    print(f"Exported embeddings of {name} (step {embedder.step}) to {out_dir}", flush=True)
  return {}


def specs(config):
  """`config.evals` as {name: dict}, sorted by name; unknown or incomplete specs raise."""
  out = {}
  for name in sorted(config.evals):
    spec = dict(config.evals[name])
    for field in ("type", "split"):
      if field not in spec:
        raise ValueError(f"config.evals.{name} has no {field!r} field")
    if spec["type"] not in EVALUATORS:
      raise ValueError(f"config.evals.{name}.type={spec['type']!r} is not known; use one of "
                       f"{sorted(EVALUATORS)}")
    out[name] = spec
  return out


def is_due(spec, config, step, final):
  """Whether an evaluator runs at training step `step` (always at the last one)."""
  every = spec.get("every_steps")
  every = config.eval_every_steps if every is None else int(every)
  return final or (every > 0 and step % every == 0)


def run(named_specs, embedder):
  """Runs evaluators in name order: {"<name>/<metric>": float}; optional failures logged."""
  results = {}
  for name, spec in named_specs.items():
    try:
      metrics = EVALUATORS[spec["type"]](embedder, spec)
    except Exception as e:  # pylint: disable=broad-except
      if not spec.get("optional", False):
        raise
      logging.error("Optional evaluation %s failed: %s", name, e)
      if embedder.is_main:
        print(f"evaluation {name} failed (optional, the run goes on): {e}", flush=True)
      continue
    results.update({f"{name}/{k}": float(v) for k, v in metrics.items()})
  return results
