"""The second world (ditm_jax.data.street): truth by hand, the written layout, prepare."""
import os

import numpy as np
import pytest

from ditm_jax.data import street

DOG, BIKE, KITE = 0, 4, 10
BROWN, RED = 6, 0
RESTING, MOVING = 1, 0
PARK, BEACH = 0, 1
LEFT_OF, RIGHT_OF, IN_FRONT_OF, BEHIND, NEXT_TO = range(5)


def scene():
  """Two brown resting dogs at x=0 in front; one red moving bike at x=1 behind; a kite at x=3."""
  g = np.full((street.MAX_GROUPS, 6), -1, np.int64)
  g[0] = (DOG, BROWN, RESTING, 2, 0, 0)
  g[1] = (BIKE, RED, MOVING, 1, 1, 1)
  g[2] = (KITE, RED, MOVING, 1, 3, 1)
  return g


def claim(descs=(), rels=(), setting=-1):
  desc = np.full((street.MAX_GROUPS, 4), -1, np.int64)
  for j, d in enumerate(descs):
    desc[j] = d
  rel = np.full((2, 3), -1, np.int64)
  for j, r in enumerate(rels):
    rel[j] = r
  return desc, rel, setting


S, ANY = street._SINGULAR, street._ANY_PLURAL  # pylint: disable=protected-access
CASES = {  # claims -> true of scene() in the park?
    "dogs": (claim([(DOG, -1, -1, ANY)]), True),
    "a dog": (claim([(DOG, -1, -1, S)]), False),  # there are two
    "two dogs": (claim([(DOG, -1, -1, 2)]), True),
    "three dogs": (claim([(DOG, -1, -1, 3)]), False),
    "a bike": (claim([(BIKE, -1, -1, S)]), True),
    "brown dogs resting": (claim([(DOG, BROWN, RESTING, 2)]), True),
    "red dogs": (claim([(DOG, RED, -1, 2)]), False),
    "in the park": (claim(setting=PARK), True),
    "at the beach": (claim(setting=BEACH), False),
    "dogs left of a bike": (claim([(DOG, -1, -1, ANY), (BIKE, -1, -1, S)], [(0, LEFT_OF, 1)]),
                            True),
    "dogs right of a bike": (claim([(DOG, -1, -1, ANY), (BIKE, -1, -1, S)],
                                   [(0, RIGHT_OF, 1)]), False),
    "dogs in front of a bike": (claim([(DOG, -1, -1, ANY), (BIKE, -1, -1, S)],
                                      [(0, IN_FRONT_OF, 1)]), True),
    "a bike behind dogs": (claim([(BIKE, -1, -1, S), (DOG, -1, -1, ANY)], [(0, BEHIND, 1)]),
                           True),
    "dogs next to a bike": (claim([(DOG, -1, -1, ANY), (BIKE, -1, -1, S)], [(0, NEXT_TO, 1)]),
                            True),
    "dogs next to a kite": (claim([(DOG, -1, -1, ANY), (KITE, -1, -1, S)], [(0, NEXT_TO, 1)]),
                            False),  # x 0 and 3
    "a bike and a bike": (claim([(BIKE, -1, -1, S), (BIKE, -1, -1, S)]), False),  # distinct
    "two relations": (claim([(DOG, -1, -1, 2), (BIKE, RED, -1, 1), (KITE, -1, -1, S)],
                            [(0, NEXT_TO, 1), (1, LEFT_OF, 2)], PARK), True),
    "two relations, one false": (claim([(DOG, -1, -1, 2), (BIKE, RED, -1, 1), (KITE, -1, -1, S)],
                                       [(0, NEXT_TO, 1), (2, LEFT_OF, 1)], PARK), False),
}


def test_truth_by_hand():
  claims = [c for c, _ in CASES.values()]
  got = street.truth(scene()[None], np.array([PARK]), np.stack([c[0] for c in claims]),
                     np.stack([c[1] for c in claims]), np.array([c[2] for c in claims]))
  assert dict(zip(CASES, got[0].tolist())) == {k: v for k, (_, v) in CASES.items()}


def test_relation_matrix_by_hand():
  rel = street.relation_matrix(scene())
  assert rel[0, 1].tolist() == [True, False, True, False, True]  # dogs vs bike
  assert rel[1, 0].tolist() == [False, True, False, True, True]
  assert rel[0, 2].tolist() == [True, False, True, False, False]
  assert not rel[0, 3].any() and not rel[0, 0].any()  # no group 3; no self-relation


def test_captions_are_true_of_their_scene_and_generic_ones_of_many():
  split = street.make_split(0, 5, 120, feature_dim=16)
  truth = street.truth(split["groups"], split["settings"], split["desc"], split["rels"],
                       split["cap_setting"])
  own = truth[np.arange(120)[:, None], np.arange(120)[:, None] * 5 + np.arange(5)]
  assert own.all()
  by_level = [truth[:, split["levels"] == level].mean() for level in range(5)]
  assert by_level[0] > 0.05 and by_level[0] > 3 * by_level[2] and by_level[4] < 0.02
  # Same seed, same world; text varies in wording (synonyms, order, fillers).
  again = street.make_split(0, 5, 120, feature_dim=16)
  assert again["captions"] == split["captions"]
  np.testing.assert_array_equal(again["features"], split["features"])
  assert len(set(split["captions"][::5])) > 60  # level-0 captions are not a handful of texts


def test_features_carry_one_region_per_instance():
  split = street.make_split(1, 1, 4, feature_dim=32, noise=0.0)
  for feats, groups in zip(split["features"], split["groups"]):
    nonzero = np.abs(feats).sum(1) > 0
    assert nonzero.sum() == groups[groups[:, 0] >= 0, 3].sum() + 2  # instances + setting


def test_written_layout_goes_through_prepare(tmp_path):
  """write() -> --mode=prepare keeps the graded truth of dev/test, and it reads back."""
  from configs import coco  # pylint: disable=g-import-not-at-top
  from ditm_jax.data import datasets, prepare  # pylint: disable=g-import-not-at-top
  raw = tmp_path / "raw"
  street.write(str(raw), num_train=40, num_dev=10, num_test=12, feature_dim=16)
  assert sorted(os.listdir(raw)) == sorted(
      [f"{s}_{x}" for s in ("train", "dev", "testall") for x in ("ims.npy", "caps.txt", "ids.txt")]
      + ["dev_relevance.npy", "testall_relevance.npy"])
  with pytest.raises(FileExistsError):
    street.write(str(raw), num_train=4, num_dev=1, num_test=1, feature_dim=16)
  config = coco.get_config("text=bigru,tiny")
  with config.unlocked():
    config.data.raw_dir, config.data.dir = str(raw), str(tmp_path / "prepared")
    config.data.feature_dim = 16
  prepare.prepare(config)
  data = datasets.load(config)
  assert sorted(data.relevance) == ["dev", "testall"]
  split = street.make_split(0, street.SPLITS["testall"], 12, feature_dim=16, first_image_id=50)
  expected = street.truth(split["groups"], split["settings"], split["desc"], split["rels"],
                          split["cap_setting"]) * (split["levels"][None, :] + 1)
  np.testing.assert_array_equal(data.relevance["testall"](), expected)
  assert data.splits["testall"].captions == split["captions"]


@pytest.mark.parametrize("triples, message", [
    (np.array([[0, 1, 2]], np.float32), "holds float32"),
    (np.array([[12, 1, 2]]), "image index 12 is outside 0..11"),
    (np.array([[0, 60, 2]]), "caption line 60 is outside 0..59"),
    (np.array([[0, 1, 0]]), "grade 0 is not > 0"),
    (np.array([[0, 1, 2], [0, 1, 3]]), "lists a pair twice"),
])
def test_bad_graded_truth_is_refused(tmp_path, triples, message):
  from configs import coco  # pylint: disable=g-import-not-at-top
  from ditm_jax.data import prepare  # pylint: disable=g-import-not-at-top
  raw = tmp_path / "raw"
  street.write(str(raw), num_train=20, num_dev=12, num_test=12, feature_dim=16)
  np.save(raw / "dev_relevance.npy", triples)
  config = coco.get_config("text=bigru,tiny")
  with config.unlocked():
    config.data.raw_dir, config.data.dir = str(raw), str(tmp_path / "prepared")
    config.data.feature_dim = 16
  with pytest.raises(ValueError, match=message) as e:
    prepare.prepare(config)
  assert "dev_relevance.npy" in str(e.value)
  assert not (tmp_path / "prepared").exists()
