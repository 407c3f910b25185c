"""COCO 5K ranking: the recall protocol on a 5,000 x 25,000 similarity matrix, on device."""

import statistics
import time

import jax
import numpy as np

from ditm_jax.evaluation import recall


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
