"""Reading Hugging Face checkpoints (PyTorch names) into Flax parameter trees.

A checkpoint is a directory holding `config.json` and `model.safetensors` (or a sharded
`model.safetensors.index.json`, or `pytorch_model.bin` where PyTorch is installed), found by
`ditm_jax.hub`.

Each model states, per Flax parameter, which PyTorch tensor fills it and how (`LINEAR`: transpose
`(out, in)` to `(in, out)`; `CONV`: `OIHW` to `HWIO`). `convert_state_dict` fills the tree, raises
`CheckpointError` naming every missing or mis-shaped weight, and reports every tensor it did not
use.
"""
import dataclasses
import pathlib
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from absl import logging
from flax import traverse_util
import numpy as np
import safetensors

from ditm_jax import hub

# Tensor transforms from PyTorch layout to Flax layout.
LINEAR = "linear"  # nn.Linear weight (out, in) -> Dense kernel (in, out).
CONV = "conv"  # nn.Conv2d weight (O, I, H, W) -> Conv kernel (H, W, I, O).
SAME = None  # Unchanged.

_TRANSFORMS: dict[Any, Callable[[np.ndarray], np.ndarray]] = {
    LINEAR: lambda w: w.T,
    CONV: lambda w: w.transpose(2, 3, 1, 0),
    SAME: lambda w: w,
}


@dataclasses.dataclass(frozen=True)
class ImportReport:
  """What a conversion did with the checkpoint's tensors (names as stored in the file)."""
  loaded: tuple[str, ...]
  unused: tuple[str, ...]
  prefix: str = ""

  def unused_groups(self) -> dict[str, int]:
    """Unused tensors grouped by module, e.g. {'pooler.*': 2, 'cls.*': 5}."""
    groups = {}
    for name in self.unused:
      parts = name.split(".")
      keep = 2 if parts[0] == self.prefix and len(parts) > 2 else 1  # 'bert.pooler.*'
      group = ".".join(parts[:keep]) + ".*"
      groups[group] = groups.get(group, 0) + 1
    return groups

  def __str__(self):
    unused = ", ".join(f"{k} ({n})" for k, n in self.unused_groups().items()) or "none"
    return f"loaded {len(self.loaded)} tensors; unused: {unused}"


def read_state_dict(directory: pathlib.Path) -> dict[str, np.ndarray]:
  """Reads all tensors of a checkpoint directory as NumPy arrays (bfloat16 via ml_dtypes)."""
  single = directory / "model.safetensors"
  index = directory / "model.safetensors.index.json"
  if single.is_file():
    return _read_safetensors([single])
  if index.is_file():
    weight_map = hub.read_json(directory, index.name)["weight_map"]
    return _read_safetensors([directory / f for f in sorted(set(weight_map.values()))])
  torch_bin = directory / "pytorch_model.bin"
  if torch_bin.is_file():
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as err:
      raise hub.CheckpointError(
          f"{torch_bin} is a PyTorch pickle and PyTorch is not installed. Convert it to "
          "model.safetensors on a machine with torch (load the model with transformers and call "
          "save_pretrained), or install torch.") from err
    tensors = torch.load(torch_bin, map_location="cpu", weights_only=True)
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in tensors.items()}
  raise hub.CheckpointError(
      f"No weights in {directory}: expected model.safetensors, model.safetensors.index.json or "
      "pytorch_model.bin.")


def _read_safetensors(files: Iterable[pathlib.Path]) -> dict[str, np.ndarray]:
  tensors = {}
  for path in files:
    if not path.is_file():
      raise hub.CheckpointError(f"{path} not found (listed in the safetensors index).")
    with safetensors.safe_open(str(path), framework="numpy") as f:
      for key in f.keys():
        tensors[key] = f.get_tensor(key)
  return tensors


def linear(hf_prefix: str) -> dict[str, tuple[str, Any]]:
  """Names for a Dense layer filled from a PyTorch nn.Linear."""
  return {"kernel": (f"{hf_prefix}.weight", LINEAR), "bias": (f"{hf_prefix}.bias", SAME)}


def layer_norm(hf_prefix: str) -> dict[str, tuple[str, Any]]:
  """Names for a LayerNorm filled from a PyTorch nn.LayerNorm."""
  return {"scale": (f"{hf_prefix}.weight", SAME), "bias": (f"{hf_prefix}.bias", SAME)}


def normalize_names(state_dict: Mapping[str, np.ndarray], prefix: str,
                    renames: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
  """Maps canonical names to stored names.

  Canonical: without the `prefix.` of task models (`bert.`, `vit.`), with `renames` (regex,
  replacement) applied, and LayerNorm `gamma`/`beta` (old checkpoints) read as `weight`/`bias`.
  """
  canonical = {}
  for stored in state_dict:
    name = stored[len(prefix) + 1:] if stored.startswith(prefix + ".") else stored
    for pattern, replacement in renames:
      name = re.sub(pattern, replacement, name)
    name = re.sub(r"(LayerNorm|layernorm\w*|norm)\.gamma$", r"\1.weight", name)
    name = re.sub(r"(LayerNorm|layernorm\w*|norm)\.beta$", r"\1.bias", name)
    if name in canonical:
      raise hub.CheckpointError(
          f"Checkpoint holds both '{canonical[name]}' and '{stored}', which name "
          f"the same weight '{name}'.")
    canonical[name] = stored
  return canonical


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray], names: Mapping[str, Any], expected: Mapping[str, Any],
    prefix: str, renames: Sequence[tuple[str, str]] = ()) -> tuple[dict[str, Any], ImportReport]:
  """Fills a Flax parameter tree from PyTorch-named tensors.

  Args:
    state_dict: stored name -> array, as read from the checkpoint.
    names: nested dict like the parameter tree, each leaf `(canonical PyTorch name, transform)`.
    expected: the parameter tree's shapes (e.g. from `jax.eval_shape` of `init`).
    prefix: task-model prefix that may precede the names (`'bert'`, `'vit'`).
    renames: extra (regex, replacement) pairs applied to stored names (alternative layouts).

  Returns:
    (params as float32 NumPy arrays, report of loaded and unused tensors).

  Raises:
    hub.CheckpointError: a weight the model needs is missing or has the wrong shape.
  """
  canonical = normalize_names(state_dict, prefix, renames)
  flat_names = traverse_util.flatten_dict(dict(names))
  flat_expected = traverse_util.flatten_dict(dict(expected))
  if set(flat_names) != set(flat_expected):
    raise RuntimeError(f"Internal: weight names do not cover the model: "
                       f"{sorted(set(flat_names) ^ set(flat_expected))}")
  params, used, missing, mismatched = {}, set(), [], []
  for path, (name, transform) in flat_names.items():
    if name not in canonical:
      missing.append(name)
      continue
    stored = canonical[name]
    used.add(stored)
    value = _TRANSFORMS[transform](np.asarray(state_dict[stored], np.float32))
    want = tuple(flat_expected[path].shape)
    if value.shape != want:
      mismatched.append(f"{stored}: checkpoint {value.shape}, model {want} "
                        f"(after {transform or 'no'} transform)")
    params[path] = np.ascontiguousarray(value)
  if missing or mismatched:
    lines = [f"missing weight: {n} (or {prefix}.{n})" for n in missing]
    lines += [f"shape mismatch: {m}" for m in mismatched]
    raise hub.CheckpointError("Checkpoint does not fit the model (is config.json the checkpoint's "
                          "own?):\n  " + "\n  ".join(lines))
  report = ImportReport(loaded=tuple(sorted(used)),
                        unused=tuple(sorted(set(state_dict) - used)), prefix=prefix)
  return traverse_util.unflatten_dict(params), report


def log_report(directory: pathlib.Path, report: ImportReport) -> None:
  """Logs what was loaded; unused tensors at WARNING so they are never silently dropped."""
  message = f"Imported {directory}: {report}"
  if report.unused:
    logging.warning("%s", message)
  else:
    logging.info("%s", message)
