"""Descriptiveness fit and score at the scale of COCO's 616K training captions."""

import os
import time

from ditm_jax import descriptiveness
from ditm_jax.bench import setups
from ditm_jax.data import demo


def time_descriptiveness(count, captions_path=setups.COCO_CAPTIONS):
  """Seconds to fit descriptiveness on `count` captions and score them.

  The captions are those of `captions_path` (COCO's 25,000 5K-test captions) repeated; where
  that file is absent, the demo's captions repeated.
  """
  if os.path.exists(captions_path):
    with open(captions_path) as f:
      base = [l.strip() for l in f if l.strip()]
    source = f"{captions_path} ({len(base)} captions) repeated"
  else:
    base = demo.generate(0, 2000, 10, 64)["train"].captions
    source = f"{captions_path} absent: the demo's {len(base)} captions repeated"
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
