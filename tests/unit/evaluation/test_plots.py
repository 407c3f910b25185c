"""Pictures of ditm_jax.evaluation.plots: what is drawn, and that PNGs are written."""

import numpy as np
import pytest

from ditm_jax.data import demo
from ditm_jax.evaluation import plots

_PATCHES = {"cylinder": 2, "pyramid": 2}  # shapes drawn with two patches; the rest with one


def _rows():
  rows = []
  for step in (10, 20, 30):
    rows.append({"step": step, "train/loss": 5.0 - step / 10, "train/match": 4.0 - step / 10,
                 "train/order": 0.1, "train/beta": 0.5})
  rows.append({"step": 20, "demo_test/rsum": 100.0, "demo_test/i2t_ndcg10": 0.3})
  rows.append({"step": 30, "demo_test/rsum": 150.0, "demo_test/i2t_ndcg10": 0.4})
  return rows


def test_training_curves(tmp_path):
  fig = plots.training_curves(_rows())
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ["loss terms", "ordering loss", "RSUM (sum of six R@K, %)", "graded metrics"]
  loss = fig.axes[0].lines[0]
  assert list(loss.get_xdata()) == [10, 20, 30] and list(loss.get_ydata()) == [4.0, 3.0, 2.0]
  assert list(fig.axes[2].lines[0].get_ydata()) == [100.0, 150.0]
  path = tmp_path / "sub" / "curves.png"
  plots.save(fig, str(path))
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert [ax.get_title() for ax in plots.training_curves(_rows()[:3]).axes] == [
      "loss terms", "ordering loss"]
  plots.save(plots.training_curves([]), str(tmp_path / "empty.png"))  # no lines yet: a note


def test_every_demo_shape_is_drawn():
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  for s, shape in enumerate(demo.SHAPES):
    ax = Figure().add_subplot()
    scene = np.full((demo.MAX_OBJECTS, 4), -1)
    scene[:2] = [[s, 0, 0, 0], [s, 6, 1, 4]]  # small red on the left, large white in the centre
    plots.draw_scene(ax, scene)
    assert len(ax.patches) == 2 * _PATCHES.get(shape, 1), shape
    first, last = ax.patches[0].get_extents(), ax.patches[-1].get_extents()
    assert first.width < last.width and first.x1 < last.x0, shape  # small left, large centre
  with pytest.raises(ValueError, match="no drawing"):
    plots._object_patches("blob", 0.5, 0.5, 0.1, "red")


def test_retrieval_grid_marks_true_images_and_the_own_image(tmp_path):
  split = demo.make_split(0, 5, 30, feature_dim=4)
  truth = demo.truth(split.scenes, split.descriptors)
  # Similarity: true pairs first, the caption's own image above all.
  sims = truth.astype(np.float32)
  sims[np.arange(150) // 5, np.arange(150)] = 2.0
  queries = plots.demo_queries(30, 5)
  assert len(set(q // 5 for q in queries)) == len(queries)
  assert sorted(q % 5 for q in queries[:5]) == [0, 1, 2, 3, 4]
  fig = plots.retrieval_grid(split.scenes, split.captions, sims, truth, queries,
                             split.image_ids, 5, top_k=4)
  cells = [ax for ax in fig.axes if ax.get_title()]
  assert len(cells) == len(queries) * 4
  for row, q in enumerate(queries):
    row_cells = cells[4 * row:4 * row + 4]
    assert row_cells[0].get_title().endswith("\u2605")  # rank 1 is the own image
    assert f"id {split.image_ids[q // 5]}" in row_cells[0].get_title()
    order = np.argsort(-sims[:, q], kind="stable")[:4]
    for ax, i in zip(row_cells, order):
      green = ax.spines["top"].get_linewidth() == 4
      assert green == bool(truth[i, q])
  path = tmp_path / "grid.png"
  plots.save(fig, str(path))
  assert path.stat().st_size > 10_000
