"""Retrieval from an exported embedding space (written by `--mode=export` or an export evaluator).

  python -m ditm_jax.retrieve --workdir=DIR --query "a red cube on the left" [--top_k 5]
  python -m ditm_jax.retrieve --workdir=DIR --image_id 412 [--top_k 5]
  [--split NAME]  the exported split (default: the only one, else 'test')

A text query goes through the trained text tower: the model is rebuilt from the config in the
export's sidecar and restored from the checkpoint the export was written from (its step), so
query and exported image embeddings come from the same parameters. An image query uses the
exported caption embeddings only (no model). Prints rank, image id, cosine score and a caption
of each hit; every user error is one line on stderr and exit status 1.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from ditm_jax.evaluation import export as export_lib  # pylint: disable=wrong-import-position


class RetrieveError(Exception):
  """A user error: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    raise RetrieveError(f"{message} (see python -m ditm_jax.retrieve --help)")


def parse_args(argv):
  parser = _Parser(prog="python -m ditm_jax.retrieve", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="run directory holding export/")
  what = parser.add_mutually_exclusive_group(required=True)
  what.add_argument("--query", help="caption text: retrieve the best images")
  what.add_argument("--image_id", type=int, help="an exported image id: the best captions")
  parser.add_argument("--top_k", type=int, default=5, help="results to print")
  parser.add_argument("--split", default=None, help="exported split (default: only one or test)")
  return parser.parse_args(argv)


def choose_split(out_dir, split):
  """The exported split to search; a missing export is a RetrieveError naming the fix."""
  available = export_lib.splits(out_dir)
  if not available:
    raise RetrieveError(f"no export in {out_dir}; write one first with python -m ditm_jax.main "
                        "--config=... --workdir=... --mode=export")
  if split is None:
    split = available[0] if len(available) == 1 else "test"
  if split not in available:
    raise RetrieveError(f"no export of split {split!r} in {out_dir} (have {available}); "
                        "pass --split")
  return split


def top_k(scores, k):
  """Indices of the k highest scores, best first (equal scores: lower index first)."""
  return np.argsort(-np.asarray(scores), kind="stable")[:k]


def embed_query(workdir, meta, text):
  """(D,) embedding of `text` by the model of the export's config and checkpoint step.

  Builds the model and its abstract state, restores that step's parameters from
  DIR/checkpoints and tokenises `text` as the run did; no input pipeline.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from ditm_jax import checkpoints, evaluate, sharding, step  # pylint: disable=g-import-not-at-top
  from ditm_jax.data import tooling  # pylint: disable=g-import-not-at-top
  from ditm_jax.models import model as model_lib  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(meta["config"])
  config.mesh.data = -1  # whatever devices this machine has
  try:
    mesh = sharding.make_mesh(config)
    vocab_size, encode = tooling.text_tooling(config)
    model = model_lib.build(config, vocab_size, dtype=jnp.dtype(config.dtype))  # as trained
    setup = step.setup(config, model, step.make_optimizer(config), mesh,
                       tooling.example_batch(config, mesh.devices.size))
    ckpt = checkpoints.Checkpoints(workdir, config.keep_checkpoints, setup.abstract, config,
                                   with_best=False)
    if meta["step"] not in ckpt.steps():
      raise RetrieveError(
          f"the export is of step {meta['step']}, whose checkpoint is no longer in {workdir}/"
          f"checkpoints (have {ckpt.steps()}); export again with --mode=export")
    params = ckpt.restore(meta["step"]).params
    return evaluate.Embedding(model, mesh, config).texts(params, encode, [text])[0]
  except (ValueError, FileNotFoundError) as e:
    raise RetrieveError(f"cannot rebuild the model of the export: {e}") from None


def _caption_of(exp, image_row):
  """The longest caption of an exported image (the most detailed, usually)."""
  c = exp.meta["captions_per_image"]
  return max(exp.texts[image_row * c:(image_row + 1) * c], key=len)


def retrieve(args):
  """The printed result lines for parsed `args`."""
  if args.top_k < 1:
    raise RetrieveError(f"--top_k must be at least 1, got {args.top_k}")
  if args.query is not None and not args.query.strip():
    raise RetrieveError("--query is empty; give a caption, e.g. --query \"a dog on a beach\"")
  out_dir = os.path.join(args.workdir, "export")
  split = choose_split(out_dir, args.split)
  try:
    exp = export_lib.load(out_dir, split)
  except (ValueError, OSError) as e:
    raise RetrieveError(str(e)) from None
  where = f"{split} export, step {exp.meta['step']}"
  if args.query is not None:
    query = embed_query(args.workdir, exp.meta, args.query)
    scores = exp.images @ query
    lines = [f"Query \"{args.query}\": top {min(args.top_k, len(scores))} of {len(scores)} "
             f"images ({where})", f"{'rank':>4}  {'image_id':>8}  {'score':>7}  caption"]
    for r, i in enumerate(top_k(scores, args.top_k)):
      lines.append(f"{r + 1:>4}  {exp.image_ids[i]:>8}  {scores[i]:>7.4f}  {_caption_of(exp, i)}")
    return lines
  rows = np.flatnonzero(exp.image_ids == args.image_id)
  if not rows.size:
    raise RetrieveError(f"image id {args.image_id} is not in the {split} export "
                        f"({len(exp.image_ids)} images, ids {exp.image_ids.min()}.."
                        f"{exp.image_ids.max()})")
  scores = exp.captions @ exp.images[rows[0]]
  lines = [f"Image {args.image_id}: top {min(args.top_k, len(scores))} of {len(scores)} captions "
           f"({where}); * = a caption of this image",
           f"{'rank':>4}  {'image_id':>9}  {'score':>7}  caption"]
  for r, c in enumerate(top_k(scores, args.top_k)):
    own = "*" if exp.caption_image_ids[c] == args.image_id else " "
    lines.append(f"{r + 1:>4}  {own}{exp.caption_image_ids[c]:>8}  {scores[c]:>7.4f}  "
                 f"{exp.texts[c]}")
  return lines


def main(argv=None):
  try:
    lines = retrieve(parse_args(sys.argv[1:] if argv is None else argv))
  except RetrieveError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print("\n".join(lines), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
