"""Hugging Face checkpoint files: a local directory or hub name, its JSON, and their errors.

The tokenizer (`data/`) and the weight import (`models/hf_import.py`) both start from a checkpoint
directory, so finding it lives here, below both. A name that is not a local directory is fetched
with `huggingface_hub.snapshot_download`, which needs the network or the local hub cache.
"""
import json
import os
import pathlib
from typing import Any, Sequence

# Files fetched from the hub: configs, weights and tokenizer files, never `pytorch_model.bin`.
HUB_PATTERNS = (
    "config.json", "*.safetensors", "model.safetensors.index.json", "preprocessor_config.json",
    "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
)


class CheckpointError(ValueError):
  """A checkpoint that cannot be found, read or mapped onto the model; the message says why."""


def resolve_checkpoint_dir(path_or_name: str | os.PathLike,
                           allow_patterns: Sequence[str] = HUB_PATTERNS) -> pathlib.Path:
  """Returns a local directory for `path_or_name`, downloading a hub model name if needed."""
  path = pathlib.Path(path_or_name).expanduser()
  if path.is_dir():
    return path
  name = str(path_or_name)
  if path.exists() or name.startswith((os.sep, ".", "~")) or name.count("/") > 1 or not name:
    raise CheckpointError(
        f"Checkpoint path '{name}' is not a directory. Pass a directory holding config.json and "
        "model.safetensors, or a Hugging Face hub model name such as 'bert-base-uncased'.")
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
    local = huggingface_hub.snapshot_download(name, allow_patterns=list(allow_patterns))
    return pathlib.Path(local)
  except Exception as err:  # pylint: disable=broad-except  (network, auth, missing repo, offline)
    raise CheckpointError(
        f"Could not get model '{name}' from the Hugging Face hub ({type(err).__name__}: {err}). "
        f"'{name}' is not a local directory, and this machine may have no network (or "
        "HF_HUB_OFFLINE is set) with the model not in the hub cache. Pass a local directory "
        "holding config.json and model.safetensors instead, e.g. one made on a machine with "
        f"network by `hf download {name} --local-dir DIR`.") from err


def read_json(directory: pathlib.Path, filename: str,
              required: bool = True) -> dict[str, Any] | None:
  """Reads `directory/filename` as JSON; None when absent and not required."""
  path = directory / filename
  if not path.is_file():
    if required:
      raise CheckpointError(f"{path} not found: a checkpoint directory needs {filename}.")
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as err:
    raise CheckpointError(f"{path} is not valid JSON: {err}") from err
