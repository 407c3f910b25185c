"""Pictures of a run (PNG, matplotlib's Agg canvas): training curves and demo retrieval examples.

Figures are built with `matplotlib.figure.Figure` directly, so no pyplot state or GUI
backend is involved; `save` writes through `tf.io.gfile` (local disk or `gs://`).
"""

import io
import os
import textwrap

from matplotlib import patches
from matplotlib.figure import Figure
import numpy as np
import tensorflow as tf

from ditm_jax.data import demo

_LOSS_TERMS = ("train/loss", "train/match", "train/order")
_GRADED = ("i2t_ndcg10", "t2i_ndcg10", "order_tau", "grade_tau")
# Demo scene layout: centre of each position, radius of each size, fill of each colour.
_XY = {"left": (0.2, 0.5), "right": (0.8, 0.5), "top": (0.5, 0.8), "bottom": (0.5, 0.2),
       "centre": (0.5, 0.5)}
_RADIUS = {"small": 0.085, "large": 0.14}
_FILL = {"yellow": "gold", "white": "white", "black": "black", "red": "tab:red",
         "green": "tab:green", "blue": "tab:blue", "purple": "tab:purple", "orange": "tab:orange"}


def save(fig, path, dpi=100):
  """Writes `fig` as a PNG to `path`."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buf.getvalue())


def _series(rows, key):
  pts = [(r["step"], r[key]) for r in rows if key in r]
  return [p[0] for p in pts], [p[1] for p in pts]


def training_curves(rows):
  """Loss terms, every evaluation's RSUM and graded metrics over steps, from metrics.jsonl rows."""
  evals = sorted({k.rsplit("/", 1)[0] for r in rows for k in r if k.endswith("/rsum")})
  graded = sorted({k for r in rows for k in r if k.rsplit("/", 1)[-1] in _GRADED})
  panels = [("loss terms", [k for k in _LOSS_TERMS[:2] if any(k in r for r in rows)]),
            ("ordering loss", [k for k in _LOSS_TERMS[2:] if any(k in r for r in rows)]),
            ("RSUM (sum of six R@K, %)", [f"{e}/rsum" for e in evals]),
            ("graded metrics", graded)]
  panels = [(title, keys) for title, keys in panels if keys]
  fig = Figure(figsize=(4.2 * max(len(panels), 1), 3.4), layout="constrained")
  for i, (title, keys) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), i + 1)
    for key in keys:
      steps, values = _series(rows, key)
      ax.plot(steps, values, marker="o" if len(steps) <= 20 else None, ms=3, label=key)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  if not panels:
    fig.text(0.5, 0.5, "metrics.jsonl has no training or evaluation lines yet", ha="center")
  return fig


def _star(x, y, r):
  angles = np.pi / 2 + np.arange(10) * np.pi / 5
  radii = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
  return np.stack([x + radii * np.cos(angles), y + radii * np.sin(angles)], axis=1)


def _object_patches(shape, x, y, r, fill):
  """Matplotlib patches drawing one demo object centred at (x, y) with radius r."""
  style = dict(facecolor=fill, edgecolor="0.15", linewidth=1.2)
  if shape == "cube":
    return [patches.Rectangle((x - 0.8 * r, y - 0.8 * r), 1.6 * r, 1.6 * r, **style)]
  if shape == "sphere":
    return [patches.Circle((x, y), r, **style)]
  if shape == "cylinder":
    return [patches.Rectangle((x - 0.6 * r, y - r), 1.2 * r, 1.8 * r, **style),
            patches.Ellipse((x, y + 0.8 * r), 1.2 * r, 0.45 * r, **style)]
  if shape == "cone":
    return [patches.Polygon([(x - 0.75 * r, y - r), (x + 0.75 * r, y - r), (x, y + r)], **style)]
  if shape == "pyramid":
    return [patches.Polygon([(x - r, y - 0.8 * r), (x + 0.5 * r, y - 0.8 * r), (x, y + r)],
                            **style),
            patches.Polygon([(x + 0.5 * r, y - 0.8 * r), (x + r, y - 0.45 * r), (x, y + r)],
                            **style)]
  if shape == "torus":
    return [patches.Wedge((x, y), r, 0, 360, width=0.5 * r, **style)]
  if shape == "ring":
    return [patches.Wedge((x, y), r, 0, 360, width=0.18 * r, **style)]
  if shape == "star":
    return [patches.Polygon(_star(x, y, 1.1 * r), **style)]
  raise ValueError(f"no drawing for demo shape {shape!r}")


def draw_scene(ax, scene):
  """Draws a demo scene ((MAX_OBJECTS, 4) attribute ids, -1 = none) on a unit-square axis."""
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_aspect("equal")
  ax.set_facecolor("0.82")
  ax.set_xticks([])
  ax.set_yticks([])
  for shape, color, size, pos in scene[scene[:, 0] >= 0]:
    x, y = _XY[demo.POSITIONS[pos]]
    for patch in _object_patches(demo.SHAPES[shape], x, y, _RADIUS[demo.SIZES[size]],
                                 _FILL[demo.COLORS[color]]):
      ax.add_patch(patch)


def retrieval_grid(scenes, captions, sims, truth, queries, image_ids, captions_per_image,
                   top_k=5):
  """Text->image examples: per query caption, its top-k images drawn from their scenes.

  Args:
    scenes: (N, MAX_OBJECTS, 4) demo scene attributes.
    captions: N * captions_per_image caption strings, image-major.
    sims: (N, N * captions_per_image) image x caption similarities.
    truth: same shape, bool: the caption is true of the scene.
    queries: caption indices to show, one row each.
    image_ids: (N,) ids shown above the images.
    captions_per_image: captions per image (caption q belongs to image q // that).
    top_k: images per row.

  Returns:
    A Figure; true images have a thick green frame, the caption's own image a star.
  """
  n = len(queries)
  fig = Figure(figsize=(2.0 * (top_k + 1.3), 2.15 * n + 0.5), layout="constrained")
  grid = fig.add_gridspec(n, top_k + 1, width_ratios=[1.3] + [1] * top_k)
  fig.suptitle("Text-to-image retrieval; green frame: caption true of the scene, "
               "\u2605 its own image", fontsize=10)
  for row, q in enumerate(queries):
    ax = fig.add_subplot(grid[row, 0])
    ax.axis("off")
    ax.text(0.0, 0.5, "\n".join(textwrap.wrap(f"\u201c{captions[q]}\u201d", 24)),
            va="center", ha="left", fontsize=9, transform=ax.transAxes)
    order = np.argsort(-sims[:, q], kind="stable")[:top_k]
    for col, i in enumerate(order):
      ax = fig.add_subplot(grid[row, col + 1])
      draw_scene(ax, scenes[i])
      own = " \u2605" if i == q // captions_per_image else ""
      ax.set_title(f"#{col + 1} id {image_ids[i]} ({sims[i, q]:.2f}){own}", fontsize=8)
      good = bool(truth[i, q])
      for spine in ax.spines.values():
        spine.set_edgecolor("tab:green" if good else "0.55")
        spine.set_linewidth(4 if good else 1)
  return fig


def demo_queries(num_images, captions_per_image, count=6):
  """Caption indices for `retrieval_grid`: different images, levels generic to specific."""
  images = np.linspace(0, num_images - 1, count).astype(int)
  return [int(i * captions_per_image + r % captions_per_image) for r, i in enumerate(images)]
