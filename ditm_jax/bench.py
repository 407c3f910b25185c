"""Benchmarks: train step, 5K ranking, descriptiveness, input pipeline, loss memory.

  python -m ditm_jax.bench --out=FILE.json [--quick] [--torch_python=PYTHON [--torch_rounds=N]]

Prints a table and writes a JSON object with "train_step_s" (config name -> median seconds
per step), "pairs_per_s", "eval_5k_s", "eval_5k_numpy_s", "descriptiveness_616k_s",
"pipeline_rows_per_s", "peak_rss_mb", "machine", "loss_memory", "sharded_vs_plain_8dev",
"text_tower_coco_lengths" and "notes". Train steps are the trainer's own `step.train_step`
(jit, donated state, the mesh over the visible devices), timed on one fixed batch: the median
of several steps after two warm-up steps (the first compiles). The parts that need 8 devices
(the loss memory at B = 4,096 and the demo step with the plain and the sharded objective) run
in a child process with 8 CPU devices. `--quick` shrinks sizes and repeats for a smoke run
(its numbers are not the targets'). Nothing here is a pass/fail test; the targets are in README
"Benchmarks".
"""

import functools
import importlib.util
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from ditm_jax import descriptiveness
from ditm_jax import flops
from ditm_jax import losses
from ditm_jax import losses_sharded
from ditm_jax import sharding
from ditm_jax import step as step_lib
from ditm_jax.data import demo
from ditm_jax.evaluation import recall
from ditm_jax.models import bert as bert_lib
from ditm_jax.data import packing_stats
from ditm_jax.models import encoders
from ditm_jax.models import gpo
from ditm_jax.models import model as model_lib
from ditm_jax.models import packing

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Write the JSON results here.")
flags.DEFINE_bool("quick", False, "Small sizes and few repeats (a smoke run).")
flags.DEFINE_enum("part", "main", ["main", "devices8"], "internal: the 8-device child part")
flags.DEFINE_bool("bert_base", None,
                  "Also time the reference model with BERT-base as its text tower (12 layers, "
                  "hidden 768) and state its matmul FLOP utilisation. Default: on GPU/TPU only "
                  "(on 2 CPU cores its step takes ~10 s).")
flags.DEFINE_enum("reference_dtype", "float32", ["float32", "bfloat16"],
                  "Compute dtype of the reference models (bfloat16: mixed precision, float32 "
                  "parameters); utilisation is stated against peaks of this dtype.")
flags.DEFINE_bool("only_reference", False,
                  "Only the reference model rows (with --bert_base, BERT-base too), their pieces "
                  "and utilisation: no data pipeline, so TensorFlow need not be installed "
                  "(e.g. on an accelerator host with JAX, Flax, Optax and ml_collections).")
flags.DEFINE_string("torch_python", None,
                    "Also time the reference step in PyTorch (ditm_jax/bench_torch.py) with this "
                    "Python interpreter, which must have torch and transformers installed.")
flags.DEFINE_integer("torch_rounds", 0,
                     "With --torch_python: this many more rounds that alternate PyTorch's "
                     "reference step and ours (each the median of 5 steps), for a comparison "
                     "that holds on a machine whose speed drifts (a shared VM).")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_CAPTIONS = os.path.join(ROOT, os.pardir, "shared", "data", "coco", "testall_caps.txt")
REFERENCE_BERT = dict(vocab_size=30522, hidden_size=256, num_hidden_layers=4,
                      num_attention_heads=4, intermediate_size=1024)
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072)
COCO_BIGRU_VOCAB = 10000  # stand-in word vocabulary of configs/coco.py:text=bigru


# ---------------------------------------------------------------- machine


def machine():
  """CPU model, cores, load, and what JAX sees."""
  model = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    model = names[0] if names else model
  except OSError:
    pass
  return {
      "cpu": model,
      "logical_cores": os.cpu_count(),
      "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
      "python": platform.python_version(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "device_kind": jax.devices()[0].device_kind,
      "process_count": jax.process_count(),
  }


def peak_rss_mb():
  """Peak resident memory of this process (and, separately, of finished children), MiB."""
  own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  return round(own, 1), round(children, 1)


# ---------------------------------------------------------------- train step


MIN_TOKENS = 8  # synthetic captions: lengths uniform on 8..max_tokens, as in the PyTorch run


class _SyntheticStats:
  """What `packing_stats.derive` reads of a training split, for `_synthetic_batch`'s distribution."""

  def __init__(self, config):
    self.num_regions = config.data.num_regions

  def caption_sum_counts(self, max_tokens):
    one = np.zeros(max_tokens + 1)
    one[MIN_TOKENS:] = 1.0
    return {str(k): packing_stats.sum_pmf(one, k).tolist() for k in range(1, 6)}


def _synthetic_batch(config, rows, vocab_size, seed=0):
  """A random training batch of `rows` images in the shapes the pipeline produces."""
  rng = np.random.default_rng(seed)
  k, length = config.data.captions_per_image, config.data.max_tokens
  r, f = config.data.num_regions, config.data.feature_dim
  lengths = rng.integers(MIN_TOKENS, length + 1, rows * k)
  drop = rng.random((rows, r)) < config.data.region_drop
  drop[:, 0] &= ~drop.all(axis=1)  # as the pipeline: region 0 stays when all would drop
  keep = ~drop
  return {
      "regions": rng.standard_normal((rows, r, f)).astype(np.float32),
      "region_mask": keep,
      "tokens": rng.integers(1, vocab_size, (rows * k, length)).astype(np.int32),
      "token_mask": np.arange(length)[None, :] < lengths[:, None],
      "desc": rng.random(rows * k).astype(np.float32),
      "image_ids": np.arange(rows, dtype=np.int32),
  }


def _step_runner(config, model, batch, mesh=None):
  """(run(n) -> seconds of each of n more train steps, matmul FLOPs, devices), compiled once.

  The first call of `run` includes the compilation. State is threaded from step to step, as
  in training (donated), on the same global batch.
  """
  mesh = mesh or sharding.make_mesh(config)
  built = step_lib.setup(config, model, step_lib.make_optimizer(config), mesh, batch)
  step_fn = built.step
  matmul_flops = flops.matmul_flops(built.step_fn, built.abstract, jax.tree.map(jnp.asarray, batch))
  global_batch = sharding.global_batch(built.batch_sharding, batch)
  live = {"state": built.init(jax.random.key(config.seed))}

  def run(n):
    times = []
    for _ in range(n):
      t = time.perf_counter()
      live["state"], live["metrics"] = step_fn(live["state"], global_batch)
      jax.block_until_ready((live["state"], live["metrics"]))
      times.append(time.perf_counter() - t)
    run.loss = float(live["metrics"]["train/loss"])
    return times
  return run, matmul_flops, int(mesh.devices.size)


def time_train_step(config, model, batch, steps=5, mesh=None):
  """Seconds per `step.train_step` on `batch` (global numpy batch): median after warm-up.

  Returns a dict: median_s, pairs_per_s, compile_s (first step, compile included), steps,
  devices, matmul_flops (of the step's program, `flops.matmul_flops`: all devices together)
  and matmul_flops_per_s.
  """
  run, matmul_flops, devices = _step_runner(config, model, batch, mesh)
  times = run(steps + 2)
  median = statistics.median(times[2:])
  pairs = config.batch_size * config.data.captions_per_image
  return {"median_s": median, "pairs_per_s": pairs / median, "compile_s": times[0],
          "steps": steps, "devices": devices, "loss": run.loss, "matmul_flops": matmul_flops,
          "matmul_flops_per_s": matmul_flops / median}


def interleaved_with_torch(config, model, batch, python, rounds, steps=5):
  """`rounds` rounds, each PyTorch's reference step (`torch_reference`, a fresh process: the
  median of its 5 steps) and then ours (the median of `steps`, one compiled step throughout):
  a comparison that holds where the machine's speed drifts. Per-round seconds and ratios."""
  run, _, _ = _step_runner(config, model, batch)
  run(2)  # compile and warm up
  torch_s, ours_s = [], []
  for _ in range(rounds):
    torch_s.append(torch_reference(python)["step_s"])
    ours_s.append(statistics.median(run(steps)))
  ratios = [t / o for t, o in zip(torch_s, ours_s)]
  return {"rounds": rounds, "torch_s": torch_s, "ours_s": ours_s, "ratio": ratios,
          "torch_median_s": statistics.median(torch_s), "ours_median_s": statistics.median(ours_s),
          "ratio_median": statistics.median(ratios)}


def load_config(name, arg=None):
  """`get_config(arg)` of configs/<name>.py."""
  spec = importlib.util.spec_from_file_location(
      f"configs_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def demo_setup(arg=None):
  """(config, data, model) of configs/demo.py."""
  from ditm_jax.data import datasets  # pylint: disable=g-import-not-at-top  (TensorFlow)
  config = load_config("demo", arg)
  data = datasets.load(config)
  return config, data, model_lib.build(config, data.vocab_size)


def coco_bigru_tiny_setup():
  """(config, model, batch) of configs/coco.py:text=bigru,tiny on a synthetic batch."""
  config = load_config("coco", "text=bigru,tiny")
  model = model_lib.build(config, COCO_BIGRU_VOCAB)
  return config, model, _synthetic_batch(config, config.batch_size, COCO_BIGRU_VOCAB)


def reference_setup(padded=False, bert=None, dtype="float32"):
  """(config, model, batch) of the reference model.

  36 x 2048 regions -> linear + MLP residual + GPO -> 1024-d; BERT (4 layers, hidden 256,
  4 heads, FFN 1024, random init; or the `bert` fields, e.g. `BERT_BASE`) -> linear
  hidden -> 1024 + GPO; 128 images x 1 caption of 32 tokens; hardest-negative triplet loss
  (VSE-infinity, no relaxation, no ordering); AdamW (configs/coco.py's optimizer, BERT at
  0.1 x lr). The towers pack their valid tokens and kept regions as the trainer does with
  configs/coco.py (buffers sized by `packing_stats.derive` for this batch's distribution: caption
  lengths uniform on 8..32, 20% region drop), or compute on every position when `padded`.
  `dtype` is the towers' compute dtype (parameters stay float32).
  """
  config = load_config("coco", "text=bert,variant=baseline_vse")
  config.batch_size = 128
  config.data.max_tokens = 32
  config.data.captions_per_image = 1
  config.loss.sum_violation_steps = 0  # the hardest negative from the first step
  if padded:
    config.model.text_token_capacity = config.model.region_capacity = 0.0
  packing_stats.derive(config, _SyntheticStats(config), data_devices=1)
  config.dtype = dtype
  dtype = jnp.dtype(dtype)
  image = encoders.RegionEncoder(embed_dim=1024, mlp_hidden=config.model.mlp_hidden,
                                 region_capacity=config.model.region_capacity, dtype=dtype)
  text = encoders.BertTextEncoder(bert_lib.BertConfig(**(bert or REFERENCE_BERT)),
                                  embed_dim=1024, dtype=dtype,
                                  token_capacity=config.model.text_token_capacity)
  model = model_lib.DualEncoder(image_tower=image, text_tower=text,
                                init_temperature=config.loss.temperature)
  return config, model, _synthetic_batch(config, 128, REFERENCE_BERT["vocab_size"])


def packing_of(config, batch):
  """The reference towers' packing fractions (derived, `packing_stats.derive`) and whether `batch`
  fits them (True: the step timed is the packed one)."""
  masks = {"token_mask": config.model.text_token_capacity,
           "region_mask": config.model.region_capacity}
  return {"text_token_capacity": masks["token_mask"], "region_capacity": masks["region_mask"],
          "batch_fits": all(bool(packing.fits(jnp.asarray(batch[k]), f)) for k, f in masks.items())}


def profile_reference(config, model, batch):
  """Seconds of the reference step's pieces (forward+backward of each tower, the loss)."""
  params = jax.jit(model.init)(jax.random.key(0), jax.tree.map(jnp.asarray, batch))["params"]
  batch = jax.tree.map(jnp.asarray, batch)

  def tower_grad(name, method):  # the batch is an argument, as in training (not a constant)
    def grad(p, batch):  # packed or padded as the train step chooses (one cond)
      return model_lib.select_packing(model, lambda m: jax.grad(
          lambda p: jnp.sum(m.apply({"params": p}, batch, method=method) ** 2))(p), batch)
    return name, jax.jit(grad), (params, batch)

  img, txt, _ = jax.jit(model.apply)({"params": params}, batch)
  kwargs = dict(matching="triplet", temperature=0.05, margin=0.2, max_violation=True, beta=0.0,
                relax_temp=0.05, order_weight=0.0, order_gamma=0.2, order_min_gap=0.05,
                relax_warmup_steps=0)
  loss_grad = jax.jit(jax.grad(lambda i, t: losses.objective(
      i, t, batch["image_ids"], batch["desc"], step=0, **kwargs)[0], argnums=(0, 1)))

  def gpo_only(tower):
    sub = params[tower]["gpo"]
    feats = jax.random.normal(jax.random.key(1), (128, 36 if tower == "image_tower" else 32, 1024))
    mask = batch["region_mask"] if tower == "image_tower" else batch["token_mask"]
    fn = jax.jit(jax.grad(lambda p, x, m: jnp.sum(gpo.GPO().apply({"params": p}, x, m) ** 2),
                          argnums=(0, 1)))
    return f"{tower} GPO fwd+bwd", fn, (sub, feats, mask)

  pieces = [tower_grad("image tower fwd+bwd", "embed_images"),
            tower_grad("text tower fwd+bwd", "embed_texts"),
            ("triplet loss fwd+bwd", loss_grad, (img, txt)),
            gpo_only("image_tower"), gpo_only("text_tower")]
  out = {}
  for name, fn, args in pieces:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(3):
      t = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - t)
    out[name] = statistics.median(times)
  return out


# ---------------------------------------------------------------- other pieces


def time_eval(n_img, captions_per_image=5, repeats=3, numpy_reference=True):
  """Seconds of `recall.i2t_t2i` on a random (n_img, 5 n_img) float32 matrix on device.

  Also the NumPy reference (`recall.i2t_t2i_numpy`) once, and the from-embeddings path
  (`recall.recall_from_embeddings`, 1024-d) after its compile.
  """
  rng = np.random.default_rng(0)
  sims = rng.standard_normal((n_img, n_img * captions_per_image), dtype=np.float32)
  on_device = jax.device_put(sims)

  def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out

  first, result = timed(lambda: recall.i2t_t2i(on_device, captions_per_image))
  steady = statistics.median(timed(lambda: recall.i2t_t2i(on_device, captions_per_image))[0]
                             for _ in range(repeats))
  out = {"shape": list(sims.shape), "first_call_s": first, "median_s": steady,
         "rsum": result["rsum"]}
  if numpy_reference:
    seconds, ref = timed(lambda: recall.i2t_t2i_numpy(sims, captions_per_image))
    out["numpy_s"] = seconds
    out["same_as_numpy"] = bool(np.isclose(ref["rsum"], result["rsum"]))
  img = rng.standard_normal((n_img, 1024), dtype=np.float32)
  txt = rng.standard_normal((n_img * captions_per_image, 1024), dtype=np.float32)
  img, txt = jax.device_put(img), jax.device_put(txt)
  fn = lambda: recall.recall_from_embeddings(img, txt, captions_per_image)
  timed(fn)
  out["from_embeddings_s"] = statistics.median(timed(fn)[0] for _ in range(repeats))
  return out


def coco_caption_lengths(max_tokens=40):
  """(images, 5) token counts of the COCO 5K test captions (../shared/data): words and
  punctuation marks plus [CLS] and [SEP], a stand-in for WordPiece counts (no vocabulary
  here); None where the file is absent."""
  if not os.path.exists(COCO_CAPTIONS):
    return None
  with open(COCO_CAPTIONS) as f:
    counts = [len(re.findall(r"\w+|[^\w\s]", l.lower())) + 2 for l in f if l.strip()]
  return np.minimum(np.asarray(counts).reshape(-1, 5), max_tokens)


def text_tower_at_caption_lengths(lengths, bert=None, images=128, k=2, max_tokens=40,
                                  rounds=3, overflow=1e-3):
  """The BERT text tower's forward+backward on captions of `lengths` ((N, 5) token counts)
  with BERT's buffer fixed at 0.75, derived from `lengths` (`capacity`, as the trainer does:
  one device, two packed masks) and padded. `images` x `k` captions drawn as the pipeline
  draws them. Medians of `rounds` interleaved rounds, and matmul FLOPs."""
  rng = np.random.default_rng(0)
  chosen = rng.choice(len(lengths), images, replace=False)
  slots = np.argsort(rng.random((images, lengths.shape[1])), axis=1)[:, :k]
  n = lengths[chosen[:, None], slots].reshape(-1)
  mask = np.arange(max_tokens)[None, :] < n[:, None]
  cfg = bert_lib.BertConfig(**(bert or REFERENCE_BERT))
  tokens = np.where(mask, rng.integers(1000, cfg.vocab_size, mask.shape), 0).astype(np.int32)
  args = (jnp.asarray(tokens), jnp.asarray(mask))
  counts = packing_stats.caption_sum_counts(lengths, max_tokens)[str(k)]
  fractions = {"fixed": 0.75, "derived": packing_stats.fraction(counts, images, k * max_tokens,
                                                           overflow / 2), "padded": 0.0}
  fns, out = {}, {"fractions": fractions, "mean_fill": float(mask.mean()), "gflop": {},
                  "fits": {}}
  for name, fraction in fractions.items():
    fits = fraction > 0 and bool(packing.fits(args[1], fraction))
    tower = encoders.BertTextEncoder(cfg, embed_dim=1024, token_capacity=fraction, pack=fits)
    params = jax.jit(tower.init)(jax.random.key(0), *args)["params"]
    grad = jax.jit(jax.grad(lambda p, t, m, tower=tower: jnp.sum(
        tower.apply({"params": p}, t, m) ** 2)))
    out["fits"][name], out["gflop"][name] = fits, flops.matmul_flops(grad, params, *args) / 1e9
    jax.block_until_ready(grad(params, *args))
    fns[name] = (grad, params)
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, (grad, params) in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(grad(params, *args))
      times[name].append(time.perf_counter() - t)
  out["median_s"] = {name: statistics.median(v) for name, v in times.items()}
  return out


def time_descriptiveness(count):
  """Seconds to fit descriptiveness on `count` captions and score them.

  The captions are COCO's 25,000 5K-test captions (../shared/data) repeated; where that file
  is absent, the demo's captions repeated.
  """
  if os.path.exists(COCO_CAPTIONS):
    with open(COCO_CAPTIONS) as f:
      base = [l.strip() for l in f if l.strip()]
    source = f"{COCO_CAPTIONS} ({len(base)} captions) repeated"
  else:
    base = demo.generate(0, 2000, 10, 64)["train"].captions
    source = f"{COCO_CAPTIONS} absent: the demo's {len(base)} captions repeated"
  captions = (base * (count // len(base) + 1))[:count]
  t = time.perf_counter()
  scorer = descriptiveness.fit(captions)
  fit_s = time.perf_counter() - t
  t = time.perf_counter()
  scorer.score(captions)
  score_s = time.perf_counter() - t
  t = time.perf_counter()
  descriptiveness.fit_score(captions)
  fit_score_s = time.perf_counter() - t
  return {"captions": count, "source": source, "fit_s": fit_s, "score_s": score_s,
          "fit_plus_score_s": fit_s + score_s, "fit_score_s": fit_score_s}


def time_pipeline(config, data, batches):
  """Rows (images) per second of the demo's training input (`data.throughput.pipeline_rate`)."""
  from ditm_jax.data import throughput  # pylint: disable=g-import-not-at-top  (TensorFlow)
  out = throughput.pipeline_rate(config, num_batches=batches, warmup=2, data=data)
  return {**out, "batches": batches, "batch_size": config.batch_size}


def loss_memory(mesh, batch_size=4096, captions_per_image=2, dim=1024):
  """Compiled per-device temporary memory (bytes) of the objective's value and gradient.

  For each matching ('triplet' as in `ditm`: hardest negative after a sum-over-negatives
  warm-up, relaxation and ordering on; 'infonce' with both terms), with the embeddings split
  over `mesh`: the plain global form, the shard_map form (`losses_sharded`), and the plain
  form on one device (what a single device would need). From
  `jax.jit(...).lower(...).compile().memory_analysis().temp_size_in_bytes`.
  """

  b, bk = batch_size, batch_size * captions_per_image
  out = {"batch_size": b, "captions_per_image": captions_per_image, "dim": dim,
         "devices": int(mesh.devices.size), "logits_bytes": b * bk * 4}
  one = Mesh(mesh.devices.reshape(-1)[:1], (sharding.DATA,), axis_types=mesh.axis_types)
  for matching in ("triplet", "infonce"):
    kwargs = dict(matching=matching, temperature=0.05, margin=0.2, max_violation=True,
                  beta=0.5, relax_temp=0.05, order_weight=1.0, order_gamma=0.2,
                  order_min_gap=0.05, relax_warmup_steps=100,
                  sum_violation_steps=100 if matching == "triplet" else 0)

    def temp_bytes(objective, on_mesh):
      split = NamedSharding(on_mesh, P(sharding.DATA))
      spec = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype, sharding=split)
      fn = jax.jit(jax.value_and_grad(lambda img, txt, ids, d, step: objective(
          img, txt, ids, d, step=step, **kwargs)[0], argnums=(0, 1)))
      compiled = fn.lower(spec((b, dim)), spec((bk, dim)), spec((b,), jnp.int32), spec((bk,)),
                          jax.ShapeDtypeStruct((), jnp.int32)).compile()
      return int(compiled.memory_analysis().temp_size_in_bytes)

    out[matching] = {
        "plain_temp_bytes": temp_bytes(losses.objective, mesh),
        "sharded_temp_bytes": temp_bytes(
            functools.partial(losses_sharded.objective, mesh=mesh), mesh),
        "one_device_temp_bytes": temp_bytes(losses.objective, one),
    }
  return out


# ---------------------------------------------------------------- parts


def devices8_part(quick):
  """The 8-device measurements (run in a child with 8 CPU devices)."""
  config, data, model = demo_setup("tiny" if quick else None)
  mesh = sharding.make_mesh(config)
  batch = next(data.train.batches(config, 0))
  steps = {}
  for sharded in (False, True):
    config.loss.sharded = sharded
    steps["sharded" if sharded else "plain"] = time_train_step(
        config, model, batch, steps=2 if quick else 10, mesh=mesh)
  memory = loss_memory(mesh, batch_size=256 if quick else 4096)
  return {"devices": len(jax.devices()), "demo_train_step": steps, "loss_memory": memory,
          "config": "configs/demo.py" + (":tiny" if quick else "")}


def _run_devices8(quick):
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "devices8.json")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=8").strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    cmd = [sys.executable, "-m", "ditm_jax.bench", "--part=devices8", f"--out={out}"]
    if quick:
      cmd.append("--quick")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
      return {"error": proc.stderr[-2000:]}
    with open(out) as f:
      return json.load(f)


def torch_reference(python, bert_base=False):
  """The PyTorch reading of the reference step (`ditm_jax.bench_torch`) run by `python`
  (with BERT-base as the text tower's BERT when `bert_base`)."""
  proc = subprocess.run([python, "-m", "ditm_jax.bench_torch"] +
                        (["--bert_base"] if bert_base else []),
                        cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=ROOT), timeout=3600, check=False)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode != 0 or not lines:
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise SystemExit(f"error: --torch_python={python}: ditm_jax.bench_torch failed "
                     f"(exit {proc.returncode}): {last}")
  return json.loads(lines[-1])


def utilisation(results, dtype):
  """Adds `matmul_peak` (measured, and the datasheet's where known) and, to every reference
  row of `results["train_step"]`, its share of those peaks (`flops.matmul_flops` per step /
  median seconds / peak)."""
  device = jax.devices()[0]
  peak = flops.measured_matmul_peak(dtype=dtype)
  peak["spec_flops_per_s"] = flops.spec_peak(device.device_kind, dtype)
  results["matmul_peak"] = peak
  for name, row in results["train_step"].items():
    if name.startswith("reference"):
      per_device = row["matmul_flops_per_s"] / row["devices"]
      row["share_of_measured_peak"] = per_device / peak["flops_per_s"]
      if peak["spec_flops_per_s"]:
        row["mfu"] = per_device / peak["spec_flops_per_s"]


def _demo_and_bigru_rows(results, details, quick, steps):
  """The demo's and coco:text=bigru,tiny's train steps and the demo's input pipeline."""
  config, data, model = demo_setup("tiny" if quick else None)
  name = "demo" + (":tiny" if quick else "")
  details[name] = time_train_step(config, model, next(data.train.batches(config, 0)), steps)
  results["pipeline"] = time_pipeline(config, data, 5 if quick else 50)
  results["pipeline_rows_per_s"] = results["pipeline"]["rows_per_s"]
  if os.path.exists(os.path.join(ROOT, "configs", "coco.py")):
    c, m, b = coco_bigru_tiny_setup()
    details["coco:text=bigru,tiny"] = time_train_step(c, m, b, steps)
    results["notes"].append(f"coco:text=bigru,tiny runs on a synthetic batch (vocabulary "
                            f"{COCO_BIGRU_VOCAB} words); no prepared COCO data is read")
  else:
    results["notes"].append("configs/coco.py absent: coco:text=bigru,tiny not timed")


def run(quick=False, torch_python=None, bert_base=None, reference_dtype="float32",
        only_reference=False, torch_rounds=0):
  """All benchmarks (or, with `only_reference`, the reference rows); JSON-ready results.

  `bert_base` (default: on GPU/TPU only) adds the reference model with BERT-base;
  `torch_rounds` (with `torch_python`) adds `interleaved_with_torch`.
  """
  results = {"quick": quick, "machine": machine(), "notes": []}
  if bert_base is None:
    bert_base = jax.default_backend() != "cpu"
  if torch_python:  # first, so that a broken interpreter fails before the long part
    results["torch_reference"] = torch_reference(torch_python)
    if bert_base:
      results["torch_reference_bert_base"] = torch_reference(torch_python, bert_base=True)
  steps = 2 if quick else 7
  train_s, pairs_s, details = {}, {}, {}

  if only_reference:
    results["notes"].append("--only_reference: the reference rows alone")
  else:
    _demo_and_bigru_rows(results, details, quick, steps)

  c, m, b = reference_setup(dtype=reference_dtype)
  details["reference"] = time_train_step(c, m, b, steps)
  details["reference"]["packing"] = packing_of(c, b)
  if torch_python and torch_rounds:
    results["torch_interleaved"] = interleaved_with_torch(c, m, b, torch_python, torch_rounds)
  if not quick:
    details["reference"]["profile_s"] = profile_reference(c, m, b)
    details["reference:padded"] = time_train_step(
        *reference_setup(padded=True, dtype=reference_dtype), steps)
  if bert_base:
    details["reference:bert-base"] = time_train_step(
        *reference_setup(bert=BERT_BASE, dtype=reference_dtype), steps)
  for key, value in details.items():
    train_s[key], pairs_s[key] = value["median_s"], value["pairs_per_s"]
  results.update(train_step_s=train_s, pairs_per_s=pairs_s, train_step=details)
  if reference_dtype != "float32":
    results["notes"].append(f"reference models compute in {reference_dtype}")
  utilisation(results, reference_dtype)
  if only_reference:
    results["peak_rss_mb"] = peak_rss_mb()[0]
    return results

  n = 1000 if quick else 5000
  results["eval"] = time_eval(n, repeats=1 if quick else 3)
  results["eval_5k_s"] = results["eval"]["median_s"]
  results["eval_5k_numpy_s"] = results["eval"].get("numpy_s")
  if quick:
    results["notes"].append("--quick: eval on 1000 x 5000, descriptiveness on 61,600 captions")

  lengths = coco_caption_lengths()
  if lengths is None:
    results["notes"].append(f"{COCO_CAPTIONS} absent: no text tower at COCO caption lengths")
  else:
    results["text_tower_coco_lengths"] = text_tower_at_caption_lengths(
        lengths, rounds=1 if quick else 3)
  results["descriptiveness"] = time_descriptiveness(61_600 if quick else 616_000)
  results["descriptiveness_616k_s"] = results["descriptiveness"]["fit_plus_score_s"]

  devices8 = _run_devices8(quick)
  results["sharded_vs_plain_8dev"] = devices8.get("demo_train_step", devices8)
  results["loss_memory"] = devices8.get("loss_memory", devices8)
  own, children = peak_rss_mb()
  results["peak_rss_mb"] = own
  results["peak_rss_children_mb"] = children
  results["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
  return results


def table(results):
  """A plain-text summary of `run`'s results."""
  lines = ["| what | value |", "|---|---:|"]
  for name, s in results["train_step_s"].items():
    lines.append(f"| train step {name} (s) | {s:.3f} ({results['pairs_per_s'][name]:.0f} "
                 "pairs/s) |")
  peak = results.get("matmul_peak")
  if peak:
    spec = peak.get("spec_flops_per_s")
    lines.append(f"| matmul peak, {peak['size']}^2 {peak['dtype']}, measured (GFLOP/s) | "
                 f"{peak['flops_per_s'] / 1e9:,.0f}" +
                 (f" (datasheet {spec / 1e9:,.0f})" if spec else "") + " |")
  for name, row in results["train_step"].items():
    if "share_of_measured_peak" not in row:
      continue
    what = "matmul GFLOP per step, GFLOP/s per device, share of measured peak"
    value = (f"{row['matmul_flops'] / 1e9:.1f}, "
             f"{row['matmul_flops_per_s'] / row['devices'] / 1e9:,.0f}, "
             f"{100 * row['share_of_measured_peak']:.0f}%")
    if "mfu" in row:
      what, value = what + ", MFU", value + f", {100 * row['mfu']:.1f}%"
    lines.append(f"| {name}: {what} | {value} |")
  packed = results["train_step"].get("reference", {}).get("packing")
  if packed:
    lines.append(f"| reference: packing buffers, share of the tokens / regions (from the "
                 f"data) | {packed['text_token_capacity']:.3f} / {packed['region_capacity']:.3f}"
                 f" ({'the batch fits' if packed['batch_fits'] else 'the batch ran PADDED'}) |")
  profile = results["train_step"].get("reference", {}).get("profile_s", {})
  for piece, s in profile.items():
    lines.append(f"| reference: {piece} (s) | {s:.3f} |")
  torch_ref = results.get("torch_reference")
  if torch_ref:
    ours = results["train_step_s"]["reference"]
    lines.append(f"| reference step, PyTorch {torch_ref['torch']} on this machine (s) | "
                 f"{torch_ref['step_s']:.3f} (this code: {torch_ref['step_s'] / ours:.2f}x) |")
    for piece in ("image_tower_fwd_bwd_s", "text_tower_fwd_bwd_s"):
      lines.append(f"| reference, PyTorch: {piece[:-2].replace('_', ' ')} (s) | "
                   f"{torch_ref[piece]:.3f} |")
  rounds = results.get("torch_interleaved")
  if rounds:
    lines.append(f"| reference step, ours / PyTorch, {rounds['rounds']} interleaved rounds, "
                 f"medians (s) | {rounds['ours_median_s']:.3f} / {rounds['torch_median_s']:.3f} "
                 f"(this code: {rounds['ratio_median']:.2f}x, rounds {min(rounds['ratio']):.2f}"
                 f"-{max(rounds['ratio']):.2f}x) |")
  torch_base = results.get("torch_reference_bert_base")
  if torch_base and "reference:bert-base" in results["train_step_s"]:
    ours = results["train_step_s"]["reference:bert-base"]
    lines.append(f"| reference with BERT-base, PyTorch {torch_base['torch']} on this machine "
                 f"(s) | {torch_base['step_s']:.3f} (this code: "
                 f"{torch_base['step_s'] / ours:.2f}x) |")
  ev = results.get("eval")
  if ev:
    shape = "x".join(map(str, ev["shape"]))
    lines.append(f"| ranking {shape} on device (s) | {ev['median_s']:.3f} |")
    if ev.get("numpy_s") is not None:
      lines.append(f"| ranking, NumPy reference (s) | {ev['numpy_s']:.2f} |")
    lines.append(f"| ranking from 1024-d embeddings (s) | {ev['from_embeddings_s']:.3f} |")
  coco = results.get("text_tower_coco_lengths")
  if coco:
    f, g, t = coco["fractions"], coco["gflop"], coco["median_s"]
    lines.append(f"| reference text tower fwd+bwd, COCO caption lengths, BERT buffer 0.75 / "
                 f"{f['derived']:.3f} (derived) / padded (s; GFLOP) | {t['fixed']:.3f} / "
                 f"{t['derived']:.3f} / {t['padded']:.3f}; {g['fixed']:.1f} / "
                 f"{g['derived']:.1f} / {g['padded']:.1f} |")
  d = results.get("descriptiveness")
  if d:
    lines.append(f"| descriptiveness fit + score, {d['captions']:,} captions (s) | "
                 f"{d['fit_plus_score_s']:.2f} |")
  if "pipeline_rows_per_s" in results:
    lines.append(f"| pipeline rows/s (demo) | {results['pipeline_rows_per_s']:.0f} |")
  for form, v in results.get("sharded_vs_plain_8dev", {}).items():
    if isinstance(v, dict) and "median_s" in v:
      lines.append(f"| 8 devices, demo step, {form} objective (s) | {v['median_s']:.3f} |")
  mem = results.get("loss_memory", {})
  for matching in ("triplet", "infonce"):
    if matching in mem:
      m = mem[matching]
      lines.append(f"| loss temp/device B={mem['batch_size']}, {matching}: plain / sharded / "
                   f"1 device (MiB) | {m['plain_temp_bytes'] / 2**20:.0f} / "
                   f"{m['sharded_temp_bytes'] / 2**20:.0f} / "
                   f"{m['one_device_temp_bytes'] / 2**20:.0f} |")
  lines.append(f"| peak RSS (MiB) | {results['peak_rss_mb']:.0f} |")
  mach = results["machine"]
  lines.append(f"| machine | {mach['cpu']}, {mach['usable_cores']} cores, {mach['backend']}, "
               f"load {mach['load_average_1_5_15']} |")
  return "\n".join(lines)


def main(argv):
  del argv
  kept = False
  if sharding.expects_cpu_backend():  # before the first computation starts JAX's backend
    from ditm_jax import cpu  # pylint: disable=g-import-not-at-top
    kept = cpu.keep_freed_memory()
  if FLAGS.part == "devices8":
    results = devices8_part(FLAGS.quick)
  else:
    results = run(FLAGS.quick, FLAGS.torch_python, FLAGS.bert_base, FLAGS.reference_dtype,
                  FLAGS.only_reference, FLAGS.torch_rounds)
    results["notes"].append("host memory: freed memory kept in the process (ditm_jax/cpu"
                            ".py)" if kept else "host memory: glibc's defaults")
    print(table(results), flush=True)
    for note in results["notes"]:
      print(f"note: {note}")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
