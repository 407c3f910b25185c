"""Tests for ditm_jax.evaluation.cxc."""
import csv

import numpy as np
import pytest

from ditm_jax.evaluation import cxc


_LOADED = {}


@pytest.fixture
def real_positives(shared_data):
  """The real CxC positives, read once per test session."""
  if 'positives' not in _LOADED:
    _LOADED['positives'] = cxc.load_positives(shared_data)
  return _LOADED['positives']


def test_real_counts_and_mapping(shared_data, real_positives):
  p = real_positives
  assert (p.n_images, p.n_captions) == (5000, 25000)
  assert p.image_text.shape == (35585, 2)
  assert len(np.unique(p.image_text[:, 0])) == 5000
  assert len(np.unique(p.image_text[:, 1])) == 24972
  assert len(p.sits_pairs) == 44833
  assert len(p.sts_pairs) == 44045
  assert len(p.sis_pairs) == 46719
  # The original COCO pairs must land on caption k <-> image k // 5.
  with open(shared_data / 'cxc' / 'sits_test.csv', newline='') as f:
    methods = np.array([r['sampling_method'] for r in csv.DictReader(f)])
  orig = p.sits_pairs[methods == 'c2i_original']
  assert len(orig) == 25000
  np.testing.assert_array_equal(orig[:, 0], orig[:, 1] // 5)
  with open(shared_data / 'cxc' / 'sts_test.csv', newline='') as f:
    methods = np.array([r['sampling_method'] for r in csv.DictReader(f)])
  co = p.sts_pairs[methods == 'c2c_cocaption']
  np.testing.assert_array_equal(co[:, 0] // 5, co[:, 1] // 5)
  # Text->text: every caption has its four co-captions; symmetric, no self.
  tt = p.text_text
  assert len(np.unique(tt[:, 0])) == 25000
  assert not np.any(tt[:, 0] == tt[:, 1])
  assert {tuple(r) for r in tt[:, ::-1]} == {tuple(r) for r in tt}
  same = tt[tt[:, 0] // 5 == tt[:, 1] // 5]
  assert len(same) == 25000 * 4
  ii = p.image_image
  assert {tuple(r) for r in ii[:, ::-1]} == {tuple(r) for r in ii}


def test_real_oracle(real_positives):
  p = real_positives
  rng = np.random.default_rng(0)
  img = rng.standard_normal((p.n_images, 16)).astype(np.float32)
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  # Caption c gets the embedding of its own image where that is a positive,
  # else of its first positive image.
  owner = np.arange(p.n_captions) // 5
  it = p.image_text
  own_pos = np.zeros(p.n_captions, bool)
  own_pos[it[it[:, 0] == it[:, 1] // 5, 1]] = True
  target = owner.copy()
  others = it[~own_pos[it[:, 1]]]
  target[others[::-1, 1]] = others[::-1, 0]
  got = cxc.cxc_metrics(img, img[target], p)
  for d in ('i2t', 't2i'):
    for k in (1, 5, 10):
      assert got[f'{d}_r{k}'] == 100.0, (d, k)
  assert got['t2t_r10'] > 99.9
  assert got['sits_spearman'] > 0.5


def _tiny():
  img = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
  txt = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0], [0.6, -0.8]],
                 np.float32)
  pos = cxc.CxcPositives(
      n_images=3, n_captions=5,
      image_text=np.array([[0, 3], [0, 4], [1, 2], [2, 0]]),
      text_text=np.array([[0, 1], [1, 0], [2, 3], [3, 2]]),
      image_image=np.array([[0, 2], [2, 0]]),
      sits_pairs=np.array([[0, 0], [0, 3], [1, 2], [2, 4]]),
      sits_scores=np.array([5.0, 1.0, 4.0, 2.0]),
      sts_pairs=np.array([[0, 1], [2, 3], [0, 3]]),
      sts_scores=np.array([4.0, 3.0, 0.0]),
      sis_pairs=np.array([[0, 2], [0, 1], [1, 2]]),
      sis_scores=np.array([3.0, 1.0, 2.0]))
  return img, txt, pos


def test_tiny_hand_worked():
  img, txt, pos = _tiny()
  got = cxc.cxc_metrics(img, txt, pos, chunk=2)
  # i2t ranks: I0 best positive T4 (0.6) behind 1, 0.8 -> 2; I1 -> 0; I2 -> 2.
  assert got['i2t_r1'] == pytest.approx(100 / 3)
  # t2i ranks (T1 has no positive): T0 1, T2 0, T3 2, T4 0.
  assert got['t2i_r1'] == 50.0
  # t2t, self excluded: T0 0, T1 0, T2 1 (T1 0.6 > T3 0; T0 ties), T3 0.
  assert got['t2t_r1'] == 75.0
  # i2i (I1 has no positive): I0 0, I2 1 (I1 0.8 > I0 0.6).
  assert got['i2i_r1'] == 50.0
  for d in ('i2t', 't2i', 't2t', 'i2i'):
    assert got[f'{d}_r5'] == got[f'{d}_r10'] == 100.0
  # SITS sims (1, -1, 1, -0.28) -> ranks (3.5, 1, 3.5, 2) vs (4, 1, 3, 2).
  assert got['sits_spearman'] == pytest.approx(4.5 / np.sqrt(4.5 * 5))
  assert got['sts_spearman'] == pytest.approx(1.0)
  # SIS sims (0.6, 0, 0.8) -> ranks (2, 1, 3) vs (3, 1, 2).
  assert got['sis_spearman'] == pytest.approx(0.5)


def test_average_ranks_and_spearman():
  np.testing.assert_array_equal(cxc.average_ranks([10, 20, 20, 5, 20]),
                                [2, 4, 4, 1, 4])
  rng = np.random.default_rng(1)
  x = rng.integers(0, 5, 50)
  y = x + rng.integers(0, 3, 50)
  rx, ry = cxc.average_ranks(x), cxc.average_ranks(y)
  assert cxc.spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
  assert cxc.spearman(x, -x) == pytest.approx(-1.0)


def test_missing_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='testall_ids.txt'):
    cxc.load_positives(tmp_path)
