"""Query dropout (CM3leon): hide a fraction of a query's tokens before retrieving with it.

CM3leon drops 20 % of the query's tokens at training time, so the documents retrieved
for a training sample are related to it without being the nearest copies of it: more
diverse conditions, and a regularizer. We read "tokens" as what each encoder tower
reads: the caption's words (each dropped with probability `rate`, at least one kept)
and the image's patches (each dropped one filled with CLIP's mean colour, which its
normalisation maps to zero, the closest an image tower has to "no input"). Only
training queries get dropout; generation retrieves with the whole query.

Every draw comes from the numpy Generator passed in, so a seeded generator gives the
same dropped query every time (an index build precomputes them per record this way).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fourm.retrieval import documents
from pseudolabel.clip_features import CLIP_MEAN

RATE = 0.2  # CM3leon's
# CLIP's normalisation mean as uint8: the fill of a dropped patch.
_CLIP_MEAN_UINT8 = np.round(np.array(CLIP_MEAN) * 255).astype(np.uint8)


def drop_words(text: str, rng: np.random.Generator, rate: float = RATE) -> str:
  """`text` without a random `rate` of its words (whitespace-separated), at least one kept."""
  words = text.split()
  if len(words) <= 1 or rate <= 0:
    return text
  keep = rng.random(len(words)) >= rate
  if not keep.any():
    keep[rng.integers(len(words))] = True
  return " ".join(w for w, k in zip(words, keep) if k)


def drop_patches(image: np.ndarray, grid: int, rng: np.random.Generator,
                 rate: float = RATE) -> np.ndarray:
  """A copy of uint8 [H, W, 3] `image` with a random `rate` of its `grid` x `grid` cells
  (the encoder's patches, once it resizes the image) filled with CLIP's mean colour; at
  least one cell is kept."""
  image = np.array(image, copy=True)
  if rate <= 0:
    return image
  drop = rng.random((grid, grid)) < rate
  if drop.all():
    drop[divmod(int(rng.integers(grid * grid)), grid)] = False
  ys = np.linspace(0, image.shape[0], grid + 1).round().astype(int)
  xs = np.linspace(0, image.shape[1], grid + 1).round().astype(int)
  for row, col in zip(*np.nonzero(drop)):
    image[ys[row]:ys[row + 1], xs[col]:xs[col + 1]] = _CLIP_MEAN_UINT8
  return image


def drop_query(query: Mapping[str, Any], rng: np.random.Generator, *, grid: int,
               rate: float = RATE) -> dict[str, Any]:
  """A copy of the query (a record or {"caption": ..., "rgb": ...}) with dropout applied
  to each part it has; other fields are left as they are."""
  dropped = dict(query)
  if query.get(documents.TEXT) is not None:
    dropped[documents.TEXT] = drop_words(str(query[documents.TEXT]), rng, rate)
  if query.get(documents.IMAGE) is not None:
    dropped[documents.IMAGE] = drop_patches(query[documents.IMAGE], grid, rng, rate)
  return dropped
