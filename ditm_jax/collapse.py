"""Collapse detection: the embeddings stop separating matches from non-matches.

A collapsed run maps every image and caption to nearly the same point: the mean similarity of
positive pairs (`train/pos_sim`) equals that of negatives (`train/neg_sim`), and the matching
loss sits at its trivial value (for the hardest-negative triplet, 2 α B K: every hinge at α).
Early in training the gap is small too, so a run counts as collapsed only when the gap stayed
below `config.loss.collapse_gap` at every logged step of a window of a quarter of the run (at
least 100 steps).
"""

WARNING = ("warning: training collapsed at step {step}: pos_sim - neg_sim stayed below {gap} "
           "since step {since} (loss {loss:.4f}); the embeddings no longer separate matches "
           "from non-matches. Lengthen loss.sum_violation_steps, lower optim.lr, or use "
           "loss.matching='infonce'")


MIN_WINDOW = 100  # steps: a shorter run (a smoke run) is too short to tell from a slow start


def window(config):
  """Steps over which the gap must stay small: a quarter of the run, at least two log lines
  and MIN_WINDOW steps."""
  return max(config.total_steps // 4, 2 * config.log_every_steps, MIN_WINDOW)


def since(history, step, gap, span):
  """The first step of the trailing run of small gaps ending at `step`, if it spans `span`.

  `history` is [(step, pos_sim - neg_sim)] of the logged steps up to and including `step`,
  in order. Returns None when the gap at `step` is not small or the small run is shorter.
  """
  first = None
  for s, g in reversed(history):
    if g >= gap:
      break
    first = s
  if first is None or step - first < span:
    return None
  return first


def history_from_rows(rows):
  """[(step, gap)] of the train lines of metrics.jsonl rows."""
  return [(r["step"], r["train/pos_sim"] - r["train/neg_sim"]) for r in rows
          if "train/pos_sim" in r and "train/neg_sim" in r]
