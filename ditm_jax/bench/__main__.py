"""Benchmarks: train step, 5K ranking, descriptiveness, input pipeline, loss memory.

  python -m ditm_jax.bench --out=FILE.json [--quick] [--torch_python=PYTHON [--torch_rounds=N]]

Prints a table (`table.py`) and writes the JSON results of `suite.run`. The parts that need
8 devices run in a child process with 8 CPU devices (`--part=devices8`, `loss_memory.py`).
Nothing here is a pass/fail test; the current numbers are in ditm_jax/bench/README.md.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from ditm_jax import cpu
from ditm_jax.bench import loss_memory
from ditm_jax.bench import setups
from ditm_jax.bench import suite
from ditm_jax.bench import table

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Write the JSON results here.")
flags.DEFINE_bool("quick", False, "Small sizes and few repeats (a smoke run).")
flags.DEFINE_enum("part", "main", ["main", "devices8"], "internal: the 8-device child part")
flags.DEFINE_bool("bert_base", None,
                  "Also time the reference model with BERT-base as its text tower (12 layers, "
                  "hidden 768) and state its matmul FLOP utilisation. Default: on GPU/TPU only "
                  "(slow on CPUs).")
flags.DEFINE_enum("reference_dtype", "float32", ["float32", "bfloat16"],
                  "Compute dtype of the reference models (bfloat16: mixed precision, float32 "
                  "parameters); utilisation is stated against peaks of this dtype.")
flags.DEFINE_bool("only_reference", False,
                  "Only the reference model rows (with --bert_base, BERT-base too), their pieces "
                  "and utilisation: no data pipeline, so TensorFlow need not be installed "
                  "(e.g. on an accelerator host with JAX, Flax, Optax and ml_collections).")
flags.DEFINE_string("torch_python", None,
                    "Also time the reference step in PyTorch (ditm_jax/bench/torch_reference.py) "
                    "with this Python interpreter, which must have torch and transformers "
                    "installed.")
flags.DEFINE_integer("torch_rounds", 0,
                     "With --torch_python: this many more rounds that alternate PyTorch's "
                     "reference step and ours (each the median of 5 steps), for a comparison "
                     "that holds on a machine whose speed drifts (a shared VM).")
flags.DEFINE_string("coco_captions", setups.COCO_CAPTIONS,
                    "COCO 5K test captions, five lines per image (testall_caps.txt), for the "
                    "text tower at real caption lengths and the descriptiveness timing; where "
                    "absent, the first is skipped and the second uses the demo's captions. "
                    "Default: ../shared/data/coco/testall_caps.txt beside the repository.")


def main(argv):
  del argv
  kept = False
  if cpu.expects_cpu_backend():  # before the first computation starts JAX's backend
    from ditm_jax.cpu import memory  # pylint: disable=g-import-not-at-top
    kept = memory.keep_freed_memory()
  if FLAGS.part == "devices8":
    results = loss_memory.devices8_part(FLAGS.quick)
  else:
    results = suite.run(FLAGS.quick, FLAGS.torch_python, FLAGS.bert_base, FLAGS.reference_dtype,
                        FLAGS.only_reference, FLAGS.torch_rounds, FLAGS.coco_captions)
    results["notes"].append("host memory: freed memory kept in the process (ditm_jax/cpu/memory"
                            ".py)" if kept else "host memory: glibc's defaults")
    print(table.table(results), flush=True)
    for note in results["notes"]:
      print(f"note: {note}")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
