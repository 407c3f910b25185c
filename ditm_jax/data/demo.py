"""The embedded demo: a procedural world of scenes with captions of graded detail.

A scene holds 2-4 objects, each with a shape, colour, size and position (positions
distinct within a scene). Its region features follow the `(36, F)` layout of real
bottom-up-attention features: one region per object (a sum of fixed attribute
embeddings plus noise) and background regions of noise, in random slots.

Every caption is a list of object descriptors (shape always, colour / size /
position optionally), rendered to text at five levels of detail, from
"a scene with a cube" (true for many scenes) to every object with all its
attributes. A caption is *true* of a scene when its descriptors can be matched to
distinct objects of the scene, so the relevance of every image-caption pair is
known exactly: generic captions are the false negatives DITM is about.
"""

import dataclasses
import itertools

import numpy as np

SHAPES = ("cube", "sphere", "cylinder", "cone", "torus", "pyramid", "ring", "star")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")
_WHERE = ("on the left", "on the right", "at the top", "at the bottom", "in the centre")
_ATTRS = (SHAPES, COLORS, SIZES, POSITIONS)  # attribute columns 0..3
NUM_LEVELS = 5  # captions per image, one per level of detail
MAX_OBJECTS = 4
_PERMS = np.array(list(itertools.permutations(range(MAX_OBJECTS))))  # (24, 4)

_LEVEL0 = ("a scene with a {}", "there is a {}", "a picture of a {}", "a {} somewhere")


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of the demo world: features, captions and their structure."""
  features: np.ndarray  # (N, 36, F) float32 region features
  scenes: np.ndarray  # (N, MAX_OBJECTS, 4) int attribute ids, -1 = no object
  captions: list  # N * NUM_LEVELS strings, image-major
  descriptors: np.ndarray  # (N * NUM_LEVELS, MAX_OBJECTS, 4) int, -1 = unspecified
  levels: np.ndarray  # (N * NUM_LEVELS,) level of detail 0 (generic) .. 4
  image_ids: np.ndarray  # (N,) int64 unique across splits


def _render(desc):
  """Text of one object descriptor (shape always present)."""
  shape, color, size, pos = desc
  words = [SIZES[size]] if size >= 0 else []
  words += [COLORS[color]] if color >= 0 else []
  words += [SHAPES[shape]]
  text = " ".join(words)
  return text + (f" {_WHERE[pos]}" if pos >= 0 else "")


def _caption(rng, scene, level):
  """One caption of `level` for `scene`: (text, descriptors (MAX_OBJECTS, 4))."""
  objs = scene[scene[:, 0] >= 0]
  order = rng.permutation(len(objs))
  desc = np.full((MAX_OBJECTS, 4), -1, np.int64)
  keep = {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 2, 3], 4: [0, 1, 2, 3]}[level]
  n = {0: 1, 1: 1, 2: 2, 3: 2, 4: len(objs)}[level]
  for j in range(n):
    o = objs[order[j]]
    fields = keep if (j == 0 or level == 4) else [0, 1] if level == 3 else [0]
    desc[j, fields] = o[fields]
  parts = [_render(d) for d in desc[:n]]
  if level == 0:
    text = _LEVEL0[rng.integers(len(_LEVEL0))].format(parts[0])
  else:
    text = "a " + " and a ".join(parts)
    if level == 1:
      text += " in the scene"
  return text, desc


def _scene(rng):
  n = rng.integers(2, MAX_OBJECTS + 1)
  scene = np.full((MAX_OBJECTS, 4), -1, np.int64)
  scene[:n, 0] = rng.integers(len(SHAPES), size=n)
  scene[:n, 1] = rng.integers(len(COLORS), size=n)
  scene[:n, 2] = rng.integers(len(SIZES), size=n)
  scene[:n, 3] = rng.permutation(len(POSITIONS))[:n]
  return scene


def attribute_embeddings(world_seed, feature_dim):
  """Fixed random embedding per attribute value, shared by every split."""
  rng = np.random.default_rng([world_seed, 7])
  return [rng.standard_normal((len(a), feature_dim)).astype(np.float32) for a in _ATTRS]


def make_split(world_seed, split_seed, num_images, *, feature_dim, num_regions=36,
               noise=0.5, first_image_id=0):
  """Generates one split deterministically from (world_seed, split_seed)."""
  if num_regions < MAX_OBJECTS:
    raise ValueError(f"demo num_regions={num_regions} must be >= {MAX_OBJECTS}")
  rng = np.random.default_rng([world_seed, split_seed])
  emb = attribute_embeddings(world_seed, feature_dim)
  scenes = np.stack([_scene(rng) for _ in range(num_images)])
  feats = noise * rng.standard_normal((num_images, num_regions, feature_dim)).astype(np.float32)
  for i, scene in enumerate(scenes):
    slots = rng.permutation(num_regions)
    for j, obj in enumerate(scene[scene[:, 0] >= 0]):
      feats[i, slots[j]] += sum(e[v] for e, v in zip(emb, obj))
  captions, descs, levels = [], [], []
  for scene in scenes:
    for level in range(NUM_LEVELS):
      text, desc = _caption(rng, scene, level)
      captions.append(text)
      descs.append(desc)
      levels.append(level)
  return Split(features=feats, scenes=scenes, captions=captions,
               descriptors=np.stack(descs), levels=np.array(levels),
               image_ids=np.arange(first_image_id, first_image_id + num_images))


def truth(scenes, descriptors, chunk=200):
  """(N_img, N_cap) bool: caption descriptors match distinct objects of the scene."""
  absent = descriptors[:, :, 0] < 0  # (C, 4)
  out = np.zeros((len(scenes), len(descriptors)), bool)
  for s in range(0, len(scenes), chunk):
    sc = scenes[s:s + chunk]  # (n, 4 objects, 4 attrs)
    # fits[d, o, n, c]: descriptor d of caption c fits object o of scene n
    # (always true for an absent descriptor, never for an absent object).
    spec = descriptors.transpose(1, 2, 0)[:, None, :, None, :]  # (4, 1, 4attr, 1, C)
    obj = sc.transpose(1, 2, 0)[None, :, :, :, None]  # (1, 4, 4attr, n, 1)
    fits = ((spec < 0) | (spec == obj)).all(2) & (obj[:, :, 0] >= 0)
    fits |= absent.T[:, None, None, :]
    ok = np.zeros((len(sc), len(descriptors)), bool)
    for p in _PERMS:  # an injective assignment of descriptors to objects
      ok |= fits[0, p[0]] & fits[1, p[1]] & fits[2, p[2]] & fits[3, p[3]]
    out[s:s + chunk] = ok
  return out


def relevance(split):
  """Graded relevance (N_img, N_cap): (level + 1) where the caption is true, else 0."""
  return truth(split.scenes, split.descriptors) * (split.levels[None, :] + 1.0)


def generate(world_seed, num_train, num_test, feature_dim, num_regions=36, noise=0.5,
             num_dev=0):
  """The demo's train and test splits, and a dev split for tuning when num_dev > 0.

  Image ids are disjoint; each split has its own seed, so adding a dev split leaves train
  and test as they are.
  """
  train = make_split(world_seed, 1, num_train, feature_dim=feature_dim,
                     num_regions=num_regions, noise=noise)
  test = make_split(world_seed, 2, num_test, feature_dim=feature_dim,
                    num_regions=num_regions, noise=noise, first_image_id=num_train)
  splits = {"train": train, "test": test}
  if num_dev:
    splits["dev"] = make_split(world_seed, 3, num_dev, feature_dim=feature_dim,
                               num_regions=num_regions, noise=noise,
                               first_image_id=num_train + num_test)
  return splits


def describe_scene(scene):
  """Human-readable list of a scene's objects (for plots and retrieval output)."""
  return ", ".join(_render(o) for o in scene if o[0] >= 0)
