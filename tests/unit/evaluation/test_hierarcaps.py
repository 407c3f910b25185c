"""Tests for ditm_jax.evaluation.hierarcaps."""
import numpy as np
import pytest

from ditm_jax.evaluation import hierarcaps


def _unit(deg):
  rad = np.deg2rad(deg)
  return np.array([np.cos(rad), np.sin(rad)], np.float32)


def test_real_csv(shared_data):
  folder = shared_data / 'hierarcaps'
  names, chains = hierarcaps.load_test(folder / 'hierarcaps_test.csv')
  assert len(names) == len(chains) == 1000
  assert all(len(c) == 4 and all(c) for c in chains)
  assert names[0] == 'COCO_val2014_000000301718.jpg'
  assert chains[0][:2] == ('table', 'table with plates')
  assert chains[1] == ('bird', 'blue bird',
                       'blue bird sitting on top of branch',
                       'A blue bird sitting on the top of a branch with '
                       'autumn leaves')
  assert all((folder / 'test_imgs' / n).is_file() for n in names)
  texts, index = hierarcaps.build_pool(chains)
  assert len(texts) == 3132 and index.shape == (1000, 4)
  assert [texts[i] for i in index[1]] == list(chains[1])


def test_oracle_is_maximal():
  rng = np.random.default_rng(0)
  n = 30
  rotation = np.linalg.qr(rng.standard_normal((n + 1, n + 1)))[0]
  eye = np.eye(n + 1)
  root = eye[0]
  img = eye[1:]
  # Level l sits at 22.5 * l degrees from the root, in the image's own plane.
  theta = np.deg2rad(22.5 * np.arange(1, 5))
  levels = (np.cos(theta)[None, :, None] * root
            + np.sin(theta)[None, :, None] * img[:, None, :])
  chains = [tuple(f'image {i} level {l}' for l in range(4)) for i in range(n)]
  got = hierarcaps.hierarcaps_metrics(img @ rotation, levels @ rotation,
                                      root @ rotation, chains)
  assert got == pytest.approx({'precision': 1.0, 'recall': 1.0,
                               'd_corr': 1.0})


def test_hand_worked_small_case():
  # Everything on a circle; angles in degrees from the root. With 4 steps the
  # query for an image at angle phi sits at atan2(a sin phi, 1 - a + a cos phi)
  # for a = 1/4 .. 1: 18.4, 45, 71.6, 90 for A; the negatives for B; and
  # 7.4, 15.0, 22.6, 30 for C.
  chains = [('animal', 'dog', 'brown dog', 'a brown dog'),
            ('animal', 'cat', 'black cat', 'a black cat'),
            ('thing', 'c2', 'c3', 'c4')]
  angles = {'animal': 10, 'dog': 40, 'brown dog': 60, 'a brown dog': 88,
            'cat': -30, 'black cat': -50, 'a black cat': -85,
            'thing': 5, 'c2': 25, 'c3': 31, 'c4': 30}
  levels = np.stack([[_unit(angles[c]) for c in chain] for chain in chains])
  img = np.stack([_unit(90), _unit(-90), _unit(30)])
  got = hierarcaps.hierarcaps_metrics(img, levels, _unit(0), chains, steps=4)
  # A retrieves c2, dog, brown dog, a brown dog: P 3/4, R 3/4.
  # B retrieves cat, black cat, a black cat (twice): P 1, R 3/4.
  # C retrieves thing, animal, c2, c4: P 3/4, R 3/4.
  # d_corr: A and B monotone (1); C distances 5, 25, 31, 30 -> (5 - 1) / 6.
  assert got == pytest.approx({'precision': (0.75 + 1 + 0.75) / 3,
                               'recall': 0.75,
                               'd_corr': (1 + 1 + 4 / 6) / 3})


def test_bad_shapes_and_file(tmp_path):
  with pytest.raises(ValueError, match='level embeddings'):
    hierarcaps.hierarcaps_metrics(np.ones((2, 3)), np.ones((2, 3, 3)),
                                  np.ones(3), [('a',) * 4] * 2)
  bad = tmp_path / 'bad.csv'
  bad.write_text('id,captions,image_url\n0,a => b,http://x/y.jpg\n')
  with pytest.raises(ValueError, match='line 2'):
    hierarcaps.load_test(bad)
