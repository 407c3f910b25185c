"""Regenerates the golden files of tests/unit/models/test_bert.py and tests/unit/models/test_vit.py.

Needs PyTorch, kept out of the project's environment:

  python3 -m venv /work/torchvenv
  /work/torchvenv/bin/pip install torch==2.13.0 transformers==5.24.0 safetensors==0.8.0 numpy==2.4.6
  /work/torchvenv/bin/python tests/golden/make_golden.py

Writes, next to this file:
  bert_tiny/      config.json, model.safetensors (random tiny BertModel, pooler included),
                  vocab.txt, tokenizer_config.json (lower-casing WordPiece).
  bert_tiny_io.npz  texts, input_ids, attention_mask (padded to 12), token_type_ids,
                  last_hidden_state (no token types given), last_hidden_state_token_types.
  vit_tiny/       config.json, model.safetensors (random tiny ViTModel, pooler included),
                  preprocessor_config.json (ImageNet mean/std).
  vit_tiny_io.npz   pixels (B, H, W, C) NHWC uint8, the model input being `normalize(pixels)`;
                  last_hidden_state.
Outputs are transformers' PyTorch models in eval mode, float32.
"""
import json
import pathlib

import numpy as np
import torch
import transformers

HERE = pathlib.Path(__file__).resolve().parent
MAX_LENGTH = 12
TEXTS = ["A man riding a horse.", "Two dogs on the street", "a red car",
         "The cat sits on a table near the window"]
WORDS = ("a an the two man woman dog dogs cat horse car bus street table window red blue green "
         "riding sits sitting on in near of with and is are . , people boy girl ball grass "
         "water white black small large").split()
PIECES = ["##s", "##ing", "##ed", "##er"] + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz")


def normalize(pixels: np.ndarray, mean, std) -> np.ndarray:
  """uint8 -> float32 model input, (x / 255 - mean) / std; tests/unit/models/test_vit.py computes the same."""
  return (pixels.astype(np.float32) / np.float32(255) - np.float32(mean)) / np.float32(std)


def randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
  """Weights far from init (N(0, 0.2), LayerNorm scales 1 + N(0, 0.1)) so layout bugs show."""
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      is_norm = "LayerNorm" in name or "layernorm" in name
      if is_norm and name.endswith("weight"):
        param.copy_(1 + 0.1 * noise)
      elif name.endswith("bias"):
        param.copy_(0.1 * noise)
      else:
        param.copy_(0.2 * noise)


def make_bert(generator: torch.Generator) -> None:
  directory = HERE / "bert_tiny"
  directory.mkdir(exist_ok=True)
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + LETTERS + PIECES
  (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
  (directory / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 16},
      indent=2) + "\n")
  config = transformers.BertConfig(
      vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=40, hidden_act="gelu", max_position_embeddings=16, type_vocab_size=2,
      layer_norm_eps=1e-12, pad_token_id=0)
  model = transformers.BertModel(config).eval()
  randomize(model, generator)
  model.save_pretrained(directory)

  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  encoded = tokenizer(TEXTS, padding="max_length", truncation=True, max_length=MAX_LENGTH,
                      return_tensors="pt")
  ids, mask = encoded["input_ids"], encoded["attention_mask"]
  assert (mask == 0).any() and (mask == 1).all(dim=0).any(), "want padded and full rows"
  token_types = (torch.arange(MAX_LENGTH)[None] >= MAX_LENGTH // 2).long().expand_as(ids) * mask
  with torch.no_grad():
    plain = model(input_ids=ids, attention_mask=mask).last_hidden_state
    typed = model(input_ids=ids, attention_mask=mask, token_type_ids=token_types).last_hidden_state
    eager = transformers.BertModel.from_pretrained(directory, attn_implementation="eager").eval()
    assert torch.allclose(eager(input_ids=ids, attention_mask=mask).last_hidden_state, plain,
                          atol=1e-6), "sdpa and eager attention disagree"
  np.savez_compressed(
      HERE / "bert_tiny_io.npz", texts=np.array(TEXTS), input_ids=ids.numpy().astype(np.int32),
      attention_mask=mask.numpy().astype(np.int32),
      token_type_ids=token_types.numpy().astype(np.int32),
      last_hidden_state=plain.numpy().astype(np.float32),
      last_hidden_state_token_types=typed.numpy().astype(np.float32))


def make_vit(generator: torch.Generator) -> None:
  directory = HERE / "vit_tiny"
  directory.mkdir(exist_ok=True)
  mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
  config = transformers.ViTConfig(
      image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
      num_attention_heads=4, intermediate_size=40, hidden_act="gelu", qkv_bias=True)
  model = transformers.ViTModel(config).eval()
  randomize(model, generator)
  model.save_pretrained(directory)
  (directory / "preprocessor_config.json").write_text(json.dumps(
      {"image_processor_type": "ViTImageProcessor", "do_resize": True,
       "size": {"height": 32, "width": 32}, "resample": 2, "do_rescale": True,
       "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": mean, "image_std": std},
      indent=2) + "\n")

  pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  nhwc = normalize(pixels, mean, std)
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(nhwc.transpose(0, 3, 1, 2).copy())).last_hidden_state
  np.savez_compressed(HERE / "vit_tiny_io.npz", pixels=pixels,
                      last_hidden_state=out.numpy().astype(np.float32))


def main():
  generator = torch.Generator().manual_seed(0)
  torch.manual_seed(0)
  make_bert(generator)
  make_vit(generator)
  for path in sorted(HERE.rglob("*")):
    if path.is_file() and path.name != "make_golden.py":
      print(f"{path.relative_to(HERE)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
  main()
