"""The procedural demo world: determinism and ground truth against brute force."""

import itertools

import numpy as np

from ditm_jax.data import demo


def _brute_truth(scene, desc):
  """Caption true of scene: its descriptors match distinct objects (every permutation)."""
  objs = [o for o in scene if o[0] >= 0]
  wanted = [d for d in desc if d[0] >= 0]
  for perm in itertools.permutations(range(len(objs)), len(wanted)):
    if all(all(d[a] < 0 or d[a] == objs[p][a] for a in range(4)) for d, p in zip(wanted, perm)):
      return True
  return False


def test_deterministic_and_layout():
  a = demo.generate(3, 20, 10, feature_dim=8)
  b = demo.generate(3, 20, 10, feature_dim=8)
  np.testing.assert_array_equal(a["train"].features, b["train"].features)
  assert a["train"].captions == b["train"].captions
  assert a["test"].features.shape == (10, 36, 8)
  assert len(a["test"].captions) == 10 * demo.NUM_LEVELS
  assert set(a["test"].image_ids).isdisjoint(a["train"].image_ids)
  c = demo.generate(4, 20, 10, feature_dim=8)
  assert a["train"].captions != c["train"].captions


def test_truth_matches_brute_force_and_own_captions_are_true():
  split = demo.make_split(0, 9, 60, feature_dim=4)
  t = demo.truth(split.scenes, split.descriptors)
  for i in range(len(split.scenes)):
    for c in range(len(split.descriptors)):
      assert t[i, c] == _brute_truth(split.scenes[i], split.descriptors[c]), (i, c)
  own = t[np.repeat(np.arange(60), demo.NUM_LEVELS), np.arange(60 * demo.NUM_LEVELS)]
  assert own.all()


def test_generic_captions_fit_more_images():
  split = demo.make_split(0, 5, 300, feature_dim=4)
  t = demo.truth(split.scenes, split.descriptors)
  per_level = [t[:, split.levels == l].sum(0).mean() for l in range(demo.NUM_LEVELS)]
  assert all(x > y for x, y in zip(per_level, per_level[1:]))
  assert per_level[0] > 30 and per_level[-1] < 1.5
  rel = demo.relevance(split)
  assert rel.max() == demo.NUM_LEVELS and set(np.unique(rel)) <= set(range(demo.NUM_LEVELS + 1))


def test_region_features_carry_the_objects():
  split = demo.make_split(1, 1, 5, feature_dim=16, noise=0.0)
  emb = demo.attribute_embeddings(1, 16)
  scene = split.scenes[0]
  expected = [sum(e[v] for e, v in zip(emb, o)) for o in scene if o[0] >= 0]
  nonzero = split.features[0][np.abs(split.features[0]).sum(1) > 0]
  assert len(nonzero) == len(expected)
  for vec in expected:
    assert np.isclose(nonzero, vec).all(1).any()
