"""The reference model's train step in PyTorch, for a same-machine comparison with ours.

  python -m ditm_jax.bench.torch_reference     # needs torch and transformers (not in requirements)
  python -m ditm_jax.bench.torch_reference --bert_base   # BERT-base as the text tower; step only
  python -m ditm_jax.bench --torch_python=PYTHON   # runs this in that interpreter

Written for this comparison (VSE-infinity's layout, not its code): 36 x 2048 regions ->
linear + two-layer MLP residual -> GPO (sort per dimension, weights from a bidirectional
GRU over positional encodings) -> 1024-d; transformers' BertModel (4 layers, hidden 256,
4 heads, FFN 1024, random init, no dropout) -> linear 256 -> 1024 -> GPO; 128 images x 1
caption of 32 tokens (lengths 8..32, as setups.py's batch); hardest-negative triplet loss
(margin 0.2); AdamW (lr 5e-4, BERT 5e-5, weight decay 1e-4) with gradient clipping at 2.0.
Prints one JSON line: median seconds per step after two warm-up steps, and the pieces.
Imports nothing from ditm_jax, so it runs in an interpreter without JAX.
"""

import json
import math
import os
import statistics
import sys
import time

B, R, F, D, L, VOCAB = 128, 36, 2048, 1024, 32, 30522
REFERENCE_BERT = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=1024)
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072)


def main(steps=5, bert_base=False):
  """Times the step (and, for the 4-layer BERT, each tower's forward and backward pass)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)

  class GPO(nn.Module):
    def __init__(self, d_pe=32, d_hidden=32):
      super().__init__()
      self.d_pe = d_pe
      self.gru = nn.GRU(d_pe, d_hidden, 1, batch_first=True, bidirectional=True)
      self.linear = nn.Linear(d_hidden, 1, bias=False)

    def forward(self, feats, lengths):
      b, n, _ = feats.shape
      pos = torch.arange(n).float()[:, None]
      div = torch.exp(torch.arange(0, self.d_pe, 2).float() * (-math.log(10000.0) / self.d_pe))
      pe = torch.zeros(n, self.d_pe)
      pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
      packed = nn.utils.rnn.pack_padded_sequence(pe[None].expand(b, n, self.d_pe), lengths,
                                                 batch_first=True, enforce_sorted=False)
      out, _ = nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True,
                                                total_length=n)
      half = out.size(-1) // 2
      scores = self.linear((out[..., :half] + out[..., half:]) / 2)[..., 0]
      valid = torch.arange(n)[None] < lengths[:, None]
      weights = torch.softmax(scores.masked_fill(~valid, -10000) / 0.1, 1)
      ordered = feats.masked_fill(~valid[..., None], -10000).sort(1, descending=True)[0]
      return (ordered.masked_fill(~valid[..., None], 0) * weights[..., None]).sum(1)

  class ImageTower(nn.Module):
    def __init__(self):
      super().__init__()
      self.fc = nn.Linear(F, D)
      self.mlp = nn.Sequential(nn.Linear(F, D // 2), nn.ReLU(), nn.Linear(D // 2, D))
      self.gpo = GPO()

    def forward(self, x):
      lengths = torch.full((x.shape[0],), x.shape[1])
      return nn.functional.normalize(self.gpo(self.fc(x) + self.mlp(x), lengths), dim=-1)

  class TextTower(nn.Module):
    def __init__(self):
      super().__init__()
      fields = BERT_BASE if bert_base else REFERENCE_BERT
      config = transformers.BertConfig(**fields, hidden_dropout_prob=0.0,
                                       attention_probs_dropout_prob=0.0)
      self.bert = transformers.BertModel(config, add_pooling_layer=False)
      self.fc = nn.Linear(fields["hidden_size"], D)
      self.gpo = GPO()

    def forward(self, ids, mask):
      hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
      return nn.functional.normalize(self.gpo(self.fc(hidden), mask.sum(1)), dim=-1)

  def triplet(im, s, margin=0.2):
    scores = im @ s.t()
    diag = scores.diag()[:, None]
    eye = torch.eye(scores.shape[0], dtype=torch.bool)
    cost_s = (margin + scores - diag).clamp(min=0).masked_fill(eye, 0)
    cost_im = (margin + scores - diag.t()).clamp(min=0).masked_fill(eye, 0)
    return cost_s.max(1)[0].sum() + cost_im.max(0)[0].sum()

  image, text = ImageTower(), TextTower()
  params = list(image.parameters()) + list(text.parameters())
  opt = torch.optim.AdamW(
      [{"params": list(image.parameters()) + list(text.gpo.parameters())
                  + list(text.fc.parameters())},
       {"params": text.bert.parameters(), "lr": 5e-5}], lr=5e-4, weight_decay=1e-4)
  rng = np.random.default_rng(0)
  regions = torch.tensor(rng.standard_normal((B, R, F)), dtype=torch.float32)
  ids = torch.tensor(rng.integers(1, VOCAB, (B, L)))
  lengths = torch.tensor(rng.integers(8, L + 1, B))
  mask = (torch.arange(L)[None] < lengths[:, None]).long()

  def step():
    opt.zero_grad()
    loss = triplet(image(regions), text(ids, mask))
    loss.backward()
    nn.utils.clip_grad_norm_(params, 2.0)
    opt.step()

  def median_seconds(fn, repeats, warmup):
    times = []
    for _ in range(warmup + repeats):
      t = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t)
    return statistics.median(times[warmup:])

  result = {
      "bert": "bert-base" if bert_base else "reference",
      "step_s": median_seconds(step, steps, 2),
      "torch": torch.__version__, "threads": torch.get_num_threads(),
      "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
  }
  if not bert_base:
    result["image_tower_fwd_bwd_s"] = median_seconds(
        lambda: image(regions).square().sum().backward(), 3, 1)
    result["text_tower_fwd_bwd_s"] = median_seconds(
        lambda: text(ids, mask).square().sum().backward(), 3, 1)
  result["pairs_per_s"] = B / result["step_s"]
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main(bert_base="--bert_base" in sys.argv[1:]))
