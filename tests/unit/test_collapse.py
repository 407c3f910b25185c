"""Collapse detection (ditm_jax.collapse) on hand-made histories."""
import ml_collections

from ditm_jax import collapse


def test_since_needs_small_gaps_over_the_whole_window():
  history = [(100, 0.2), (200, 0.005), (300, 0.004), (400, 0.006)]
  assert collapse.since(history, 400, 0.01, 200) == 200
  assert collapse.since(history, 400, 0.01, 201) is None  # small for 200 steps only
  assert collapse.since(history[:3], 300, 0.01, 200) is None
  recovered = history + [(500, 0.05)]
  assert collapse.since(recovered, 500, 0.01, 0) is None
  assert collapse.since([(10, 0.0), (20, 0.0)], 20, 0.01, 10) == 10  # small from the start


def test_window_is_a_quarter_of_the_run_and_at_least_two_log_lines():
  config = ml_collections.ConfigDict(dict(total_steps=800, log_every_steps=100))
  assert collapse.window(config) == 200
  config.log_every_steps = 150
  assert collapse.window(config) == 300
  config.total_steps = 40  # a smoke run: never long enough to tell
  config.log_every_steps = 10
  assert collapse.window(config) == 100


def test_history_from_rows_reads_train_lines_only():
  rows = [{"step": 10, "train/pos_sim": 0.5, "train/neg_sim": 0.25},
          {"step": 10, "demo_test/rsum": 100.0},
          {"step": 20, "train/pos_sim": 0.9, "train/neg_sim": 0.9}]
  assert collapse.history_from_rows(rows) == [(10, 0.25), (20, 0.0)]
