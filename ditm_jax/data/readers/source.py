"""What every raw-data reader returns: a split's captions in memory and its images in chunks."""
import dataclasses
from typing import Callable, Iterator, Optional

import numpy as np

CAPTIONS_PER_IMAGE = 5  # the COCO / Flickr30K protocol: five captions per image
FEATURE_CHUNK = 128  # feature rows read (and held) at a time
JPEG_CHUNK = 64  # image files read at a time


@dataclasses.dataclass
class SplitSource:
  """A split as read from raw data: captions in memory, images streamed in chunks."""
  name: str
  captions: list  # 5 * N, image-major
  image_ids: np.ndarray  # (N,) int64
  chunks: Callable[[], Iterator[tuple[int, object]]]  # -> (first image, (n, R, F) or [bytes])
  layout: str  # how the raw files were read, for the manifest
  relevance: Optional[np.ndarray] = None  # (M, 3) graded truth (image, caption, grade), if any

  @property
  def num_images(self):
    return len(self.image_ids)
