"""A second procedural world, unlike the demo, written as real data would be (precomputed layout).

  python -m ditm_jax.data.street --out=data/street_raw [--num_train=4000 --num_dev=1000
      --num_test=1000 --feature_dim=128 --world_seed=0]

writes `{train,dev,testall}_ims.npy` (N, 36, F), `_caps.txt` (five captions per image, generic to
specific), `_ids.txt` and `_relevance.npy` (graded truth: rows (image, caption, grade)), so it
goes through `--mode=prepare` and `configs/coco.py` like COCO.

Scenes are outdoor settings (park, beach, ...) with 2-4 groups of things: a category, a colour,
a state and a count (one, two or three instances, one region each), at distinct positions left
to right, in front or behind. Captions make claims about the setting, groups (category with its
grammatical number or exact count, colour, state) and relations between groups (left of, in front
of, next to, ...). The wording varies: synonyms ("bike", "bicycle", "cycle"), word order (either
side of a relation, setting first or last), counts as words or digits, and filler phrases ("here
we can see", "on a nice day"). So cumulative TF-IDF is an imperfect proxy for specificity: a rare
synonym or a filler raises a generic caption's score, a terse specific caption scores low.

A caption is true of a scene when its group descriptors match distinct groups that satisfy its
relations and its setting; grade = level + 1 (1..5) where true, as in the demo.
"""

import argparse
import itertools
import os
import sys

import numpy as np

CATEGORIES = (("dog", "dogs", ("dog", "puppy", "pup")), ("cat", "cats", ("cat", "kitten", "kitty")),
              ("horse", "horses", ("horse", "pony")), ("bird", "birds", ("bird", "songbird")),
              ("bicycle", "bicycles", ("bicycle", "bike", "cycle")),
              ("car", "cars", ("car", "automobile", "sedan")), ("bus", "buses", ("bus", "coach")),
              ("bench", "benches", ("bench", "seat")), ("umbrella", "umbrellas",
                                                         ("umbrella", "parasol")),
              ("ball", "balls", ("ball",)), ("kite", "kites", ("kite",)),
              ("boat", "boats", ("boat", "dinghy")))
_PLURAL = {"puppy": "puppies", "pup": "pups", "kitten": "kittens", "kitty": "kitties",
           "pony": "ponies", "songbird": "songbirds", "bike": "bikes", "cycle": "cycles",
           "automobile": "automobiles", "sedan": "sedans", "coach": "coaches", "seat": "seats",
           "parasol": "parasols", "dinghy": "dinghies"}
COLORS = (("red", "crimson", "scarlet"), ("blue", "azure"), ("green", "emerald"),
          ("yellow", "golden"), ("black", "dark"), ("white", "pale"), ("brown", "tan"),
          ("grey", "gray", "silver"))
STATES = (("moving", "in motion", "on the move"), ("resting", "at rest", "standing still"),
          ("wet", "soaked", "dripping wet"), ("muddy", "dirty", "covered in mud"))
SETTINGS = (("park", "public park"), ("beach", "seaside", "shore"), ("street", "road"),
            ("field", "meadow", "pasture"), ("harbour", "port", "marina"),
            ("garden", "yard", "backyard"))
# Relations between groups g, h, from their positions: x (0..4, left to right), depth (0 front).
RELATIONS = (("to the left of", "left of", "on the left side of"),
             ("to the right of", "right of", "on the right side of"),
             ("in front of", "before"), ("behind", "in back of", "at the back of"),
             ("next to", "beside", "near", "by"))
_INVERSE = (1, 0, 3, 2, 4)
_COUNT_WORDS = {2: ("two", "2", "a pair of"), 3: ("three", "3", "a trio of")}
_PREFIX = ("", "", "", "here we can see ", "this is a picture of ", "an image that shows ",
           "in this photo there is ", "a snapshot of ")
_SUFFIX = ("", "", "", " on a nice day", " in the afternoon", " seen from a distance",
           " in this photo")
MAX_GROUPS = 4
NUM_LEVELS = 5
NUM_REGIONS = 36
_ANY_PLURAL, _SINGULAR = -2, -3  # number claims besides an exact count (1..3)
_PERMS = np.array(list(itertools.permutations(range(MAX_GROUPS))))


def _scene(rng):
  """(groups (MAX_GROUPS, 6) int: category, colour, state, count, x, depth; -1 = none, setting)."""
  n = rng.integers(2, MAX_GROUPS + 1)
  g = np.full((MAX_GROUPS, 6), -1, np.int64)
  g[:n, 0] = rng.choice(len(CATEGORIES), n, replace=False)
  g[:n, 1] = rng.integers(len(COLORS), size=n)
  g[:n, 2] = rng.integers(len(STATES), size=n)
  g[:n, 3] = rng.choice([1, 1, 2, 3], n)
  g[:n, 4] = rng.choice(5, n, replace=False)
  g[:n, 5] = rng.integers(2, size=n)
  return g, int(rng.integers(len(SETTINGS)))


def relation_matrix(groups):
  """(..., G, G, len(RELATIONS)) bool: relation r holds from group g to group h."""
  x, depth, present = groups[..., 4], groups[..., 5], groups[..., 0] >= 0
  xg, xh = x[..., :, None], x[..., None, :]
  dg, dh = depth[..., :, None], depth[..., None, :]
  both = present[..., :, None] & present[..., None, :] & ~np.eye(groups.shape[-2], dtype=bool)
  rel = np.stack([xg < xh, xg > xh, (dg == 0) & (dh == 1), (dg == 1) & (dh == 0),
                  np.abs(xg - xh) == 1], -1)
  return rel & both[..., None]


class _Caption:
  """Claims of one caption: descriptors (MAX_GROUPS, 4), relations (2, 3), setting."""

  def __init__(self):
    # category, colour, state, number (-1 none, _SINGULAR, _ANY_PLURAL or an exact count)
    self.desc = np.full((MAX_GROUPS, 4), -1, np.int64)
    self.rels = np.full((2, 3), -1, np.int64)  # (descriptor a, relation, descriptor b)
    self.setting = -1


def _words(rng, options):
  return options[rng.integers(len(options))]


def _noun(rng, category, plural):
  word = _words(rng, CATEGORIES[category][2])
  if not plural:
    return word
  return CATEGORIES[category][1] if word == CATEGORIES[category][0] else _PLURAL[word]


def _phrase(rng, desc):
  """Text of a group descriptor: number, colour, noun and state."""
  category, color, state, number = desc
  plural = number == _ANY_PLURAL or number >= 2
  words = []
  if number >= 2:
    words.append(_words(rng, _COUNT_WORDS[number]))
  elif number == _ANY_PLURAL:
    words.append(_words(rng, ("some", "several", "")))
  elif number in (1, _SINGULAR):
    words.append(_words(rng, ("a", "one", "a single")) if number == 1 else "a")
  if color >= 0:
    words.append(_words(rng, COLORS[color]))
  words.append(_noun(rng, category, plural))
  text = " ".join(w for w in words if w)
  if state >= 0:
    text += " " + ("that are " if plural else "that is ") * int(rng.random() < 0.3) + _words(
        rng, STATES[state])
  return text


def _setting_phrase(rng, setting):
  where = _words(rng, SETTINGS[setting])
  return "on the shore" if where == "shore" else _words(rng, ("in the ", "at the ")) + where


def _claim_group(group, level, first):
  """The descriptor a caption of `level` claims about `group`."""
  category, color, state, count = group[:4]
  if level == 0:
    return [category, -1, -1, _SINGULAR if count == 1 else _ANY_PLURAL]
  full = level == 4 or (first and level >= 2)
  return [category, color if full or level == 3 else -1, state if full else -1,
          count if level >= 1 else -1]


def _caption(rng, groups, setting, level):
  """(text, _Caption) of `level` for a scene."""
  present = np.flatnonzero(groups[:, 0] >= 0)
  order = rng.permutation(present)
  cap = _Caption()
  n = {0: 1, 1: 1, 2: 1, 3: 2, 4: len(present)}[level]
  for j in range(n):
    cap.desc[j] = _claim_group(groups[order[j]], level, j == 0)
  rel = relation_matrix(groups)
  chosen = []
  if level >= 3:
    for a, b in ([(0, 1)] if level == 3 else [(0, 1), (1, 2)][:n - 1]):
      holds = np.flatnonzero(rel[order[a], order[b]])
      if holds.size:
        chosen.append((a, int(rng.choice(holds)), b))
    for s, (a, r, b) in enumerate(chosen):
      cap.rels[s] = (a, r, b)
  with_setting = level in (1, 4) or (level == 0 and rng.random() < 0.5) or (
      level >= 2 and rng.random() < 0.5)
  if level == 0 and with_setting:  # generic: the setting alone, or one group alone
    cap.desc[0] = -1
  if with_setting:
    cap.setting = setting
  return _render(rng, cap, level), cap


def _render(rng, cap, level):
  """Text of a caption's claims, with varied word order and fillers."""
  phrases = [_phrase(rng, d) if d[0] >= 0 else None for d in cap.desc]
  used, clauses = set(), []
  for a, r, b in cap.rels:
    if a < 0:
      continue
    if rng.random() < 0.5:  # the same fact from the other side
      a, r, b = b, _INVERSE[r], a
    clauses.append(f"{phrases[a]} {_words(rng, RELATIONS[r])} {phrases[b]}")
    used |= {a, b}
  clauses += [p for j, p in enumerate(phrases) if p is not None and j not in used]
  body = (" and " if rng.random() < 0.7 else ", ").join(clauses)
  if cap.setting >= 0:
    where = _setting_phrase(rng, cap.setting)
    if not body:
      body = _words(rng, ("a scene ", "a view ", "somewhere ", "an outdoor scene ")) + where
    elif rng.random() < 0.5:
      body = f"{where}, {body}"
    else:
      body = f"{body} {where}"
  prefix = _words(rng, _PREFIX) if level <= 2 else ""
  suffix = _words(rng, _SUFFIX) if level <= 1 else ""
  return (prefix + body + suffix).strip()


def _features(rng, groups, setting, emb, noise):
  """(NUM_REGIONS, F): one region per instance, two setting regions, noise elsewhere."""
  feats = noise * rng.standard_normal((NUM_REGIONS, emb["category"].shape[1])).astype(np.float32)
  slots = iter(rng.permutation(NUM_REGIONS))
  for g in groups[groups[:, 0] >= 0]:
    base = (emb["category"][g[0]] + emb["color"][g[1]] + emb["state"][g[2]] + emb["x"][g[4]]
            + emb["depth"][g[5]])
    for _ in range(g[3]):
      feats[next(slots)] += base
  for _ in range(2):
    feats[next(slots)] += emb["setting"][setting]
  return feats


def embeddings(world_seed, feature_dim):
  rng = np.random.default_rng([world_seed, 11])
  sizes = dict(category=len(CATEGORIES), color=len(COLORS), state=len(STATES), x=5, depth=2,
               setting=len(SETTINGS))
  return {k: rng.standard_normal((n, feature_dim)).astype(np.float32) for k, n in sizes.items()}


def make_split(world_seed, split_seed, num_images, feature_dim, noise=0.5, first_image_id=0):
  """dict: features (N, 36, F), captions (5N), groups (N, G, 6), settings (N,), claims, levels."""
  rng = np.random.default_rng([world_seed, split_seed])
  emb = embeddings(world_seed, feature_dim)
  scenes = [_scene(rng) for _ in range(num_images)]
  groups = np.stack([g for g, _ in scenes])
  settings = np.array([s for _, s in scenes])
  feats = np.stack([_features(rng, g, s, emb, noise) for g, s in scenes])
  captions, claims = [], []
  for g, s in scenes:
    for level in range(NUM_LEVELS):
      text, cap = _caption(rng, g, s, level)
      captions.append(text)
      claims.append(cap)
  return dict(features=feats, captions=captions, groups=groups, settings=settings,
              desc=np.stack([c.desc for c in claims]), rels=np.stack([c.rels for c in claims]),
              cap_setting=np.array([c.setting for c in claims]),
              levels=np.tile(np.arange(NUM_LEVELS), num_images),
              image_ids=np.arange(first_image_id, first_image_id + num_images))


def truth(groups, settings, desc, rels, cap_setting, chunk=100):
  """(N_img, N_cap) bool: some injective assignment of descriptors to groups satisfies all."""
  absent = desc[:, :, 0] < 0  # (C, G)
  number = desc[:, :, 3]
  out = np.zeros((len(groups), len(desc)), bool)
  for s in range(0, len(groups), chunk):
    g = groups[s:s + chunk]  # (n, G, 6)
    spec = desc.transpose(1, 2, 0)[:, None, :, None, :]  # (Gd, 1, 4, 1, C)
    obj = g.transpose(1, 2, 0)[None, :, :, :, None]  # (1, Go, 6, n, 1)
    count = obj[:, :, 3]
    num = number.T[:, None, None, :]  # (Gd, 1, 1, C)
    same = lambda a: (spec[:, :, a] < 0) | (spec[:, :, a] == obj[:, :, a])  # or unspecified
    fits = ((spec[:, :, 0] == obj[:, :, 0]) & same(1) & same(2)
            & ((num == -1) | ((num == _SINGULAR) & (count == 1))
               | ((num == _ANY_PLURAL) & (count >= 2)) | (num == count)))  # (Gd, Go, n, C)
    fits |= absent.T[:, None, None, :]
    rel = relation_matrix(g)  # (n, G, G, R)
    ok = np.zeros((len(g), len(desc)), bool)
    for p in _PERMS:
      this = fits[0, p[0]] & fits[1, p[1]] & fits[2, p[2]] & fits[3, p[3]]
      for slot in range(rels.shape[1]):
        a, r, b = rels[:, slot, 0], rels[:, slot, 1], rels[:, slot, 2]
        has = a >= 0
        holds = rel[:, p[np.maximum(a, 0)], p[np.maximum(b, 0)], np.maximum(r, 0)]  # (n, C)
        this &= holds | ~has[None, :]
      ok |= this
    ok &= (cap_setting[None, :] < 0) | (cap_setting[None, :] == settings[s:s + chunk, None])
    out[s:s + chunk] = ok
  return out


def relevance_triples(split):
  """(M, 3) int64 rows (image, caption, grade) of the true pairs; grade = level + 1."""
  t = truth(split["groups"], split["settings"], split["desc"], split["rels"], split["cap_setting"])
  img, cap = np.nonzero(t)
  return np.stack([img, cap, split["levels"][cap] + 1], 1).astype(np.int64)


SPLITS = {"train": 1, "dev": 2, "testall": 3}


def write(out, num_train=4000, num_dev=1000, num_test=1000, feature_dim=128, world_seed=0,
          noise=0.5):
  """Writes the three splits in the precomputed layout to the new directory `out`."""
  if os.path.exists(out) and os.listdir(out):
    raise FileExistsError(f"{out} exists and is not empty; pass a new --out directory")
  os.makedirs(out, exist_ok=True)
  first = 0
  for name, n in zip(SPLITS, (num_train, num_dev, num_test)):
    split = make_split(world_seed, SPLITS[name], n, feature_dim, noise, first_image_id=first)
    first += n
    np.save(os.path.join(out, f"{name}_ims.npy"), split["features"])
    with open(os.path.join(out, f"{name}_caps.txt"), "w") as f:
      f.write("\n".join(split["captions"]) + "\n")
    np.savetxt(os.path.join(out, f"{name}_ids.txt"), np.repeat(split["image_ids"], NUM_LEVELS),
               fmt="%d")
    if name != "train":  # graded truth is for evaluation only
      np.save(os.path.join(out, f"{name}_relevance.npy"), relevance_triples(split))
    print(f"{name}: {n} images, {len(split['captions'])} captions", flush=True)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="new directory for the raw files")
  p.add_argument("--num_train", type=int, default=4000)
  p.add_argument("--num_dev", type=int, default=1000)
  p.add_argument("--num_test", type=int, default=1000)
  p.add_argument("--feature_dim", type=int, default=128)
  p.add_argument("--world_seed", type=int, default=0)
  p.add_argument("--noise", type=float, default=0.5)
  a = p.parse_args(argv)
  try:
    write(a.out, a.num_train, a.num_dev, a.num_test, a.feature_dim, a.world_seed, a.noise)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
