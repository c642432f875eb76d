"""4M-21's SAM instances (queried by points) as text tokens.

The reference asks, for a few query points of the image, which SAM instances contain
each one, and writes each instance as its box and the 16 token ids of the SAM-instance
tokenizer. A record is int32 [R, 22], one row per (point, instance), rows of a point
consecutive, points in the order to write them:

    0:2    the query point (x, y) in pixels of the 224 px image
    2:6    the instance's box (xmin, ymin, xmax, ymax) in pixels; -1 on a point's only
           row when no instance contains it
    6:22   the instance's 16 token ids (0..1023; -1 with the box)

written the way the reference's SAMInstanceTokTransform writes it:

    point v0=<y> v1=<x>  polygon v0=<xmin> v1=<ymin> v2=<xmax> v3=<ymax> <16 tokens> ...
    point v0=<y> v1=<x>  none

Note the point's order (row first) against the box's (x first): that is the
reference's. Token ids below 512 are v0=t, above v1=t-512. The reference draws its 7
query points at random per sample and shuffles points and instances; a fourm record
holds the points and order to write (finding which instances contain a point is the
labeller's job).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from fourm.data.sam_instances import (INSTANCE_VOCAB, MASK_SIZE, TOKENS_PER_INSTANCE,
                                      has_instance, instance_masks, with_tokens)
from fourm.errors import RecordError, UsageError
from tokenizers_vq.value_words import (MAX_VALUE, Malformed, WordCodec, WordReader,
                                       parse_pieces, token_value, value_word)

WIDTH = 6 + TOKENS_PER_INSTANCE


def _points(rows: np.ndarray) -> list[np.ndarray]:
  """The rows grouped by consecutive equal query points."""
  starts = np.flatnonzero(np.r_[True, (rows[1:, :2] != rows[:-1, :2]).any(axis=1)])
  return np.split(rows, starts[1:])


class SamInstanceCodec(WordCodec):
  name = "sam_instance"

  def words(self, instances) -> list[str]:
    rows = np.asarray(instances)
    if rows.ndim != 2 or rows.shape[1] != WIDTH or rows.dtype.kind not in "iu":
      raise RecordError(f"expected int [R, {WIDTH}] (point x y, box, {TOKENS_PER_INSTANCE} "
                        f"tokens), got {rows.dtype} {list(rows.shape)}", field=self.name)
    rows = rows.astype(np.int64)
    empty = (rows[:, 2:] == -1).all(axis=1)
    if rows[:, :6].size and (rows[:, :2].min() < 0 or rows[:, :6][~empty].min(initial=0) < 0
                             or rows[:, :6].max() > MAX_VALUE):
      raise RecordError(f"points and boxes must be pixels in 0..{MAX_VALUE} (-1: no instance)",
                        field=self.name)
    boxes, tokens = rows[~empty, 2:6], rows[~empty, 6:]
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
      raise RecordError("boxes must be (xmin, ymin, xmax, ymax) with min <= max",
                        field=self.name)
    if tokens.size and (tokens.min() < 0 or tokens.max() > 1023):
      raise RecordError("instance tokens must be in 0..1023", field=self.name)
    words = []
    for point in _points(rows):
      x, y = point[0, :2].tolist()
      words += ["point", value_word(0, y), value_word(1, x)]
      hit = ~(point[:, 2:] == -1).all(axis=1)
      if not hit.any():
        if len(point) > 1:
          raise RecordError(f"point ({x}, {y}): a row without an instance must be the "
                            "point's only row", field=self.name)
        words.append("none")
        continue
      if not hit.all():
        raise RecordError(f"point ({x}, {y}) has rows with and without an instance",
                          field=self.name)
      for row in point.tolist():
        words.append("polygon")
        words += [value_word(axis, value) for axis, value in enumerate(row[2:6])]
        words += [token_value(t) for t in row[6:]]
    return words

  def parse(self, reader: WordReader, strict: bool) -> tuple[np.ndarray, int]:
    """int32 [R, 22]: the rows as written (a point's instances in sequence order)."""
    points, skipped = parse_pieces(reader, strict, self._point, starts=("point",))
    rows = [row for point in points for row in point]
    return np.asarray(rows, np.int32).reshape(-1, WIDTH), skipped

  def _point(self, reader: WordReader) -> list[list[int]]:
    reader.word("point")
    y = reader.value([0], "the point's y")[1]
    x = reader.value([1], "the point's x")[1]
    if reader.peek() == "none":
      reader.word("none")
      return [[x, y] + [-1] * (WIDTH - 2)]
    rows = []
    while reader.peek() == "polygon" or not rows:
      reader.word("polygon")
      box = [reader.value([axis], "the instance's box")[1] for axis in range(4)]
      if box[2] < box[0] or box[3] < box[1]:
        raise Malformed(reader.position - 1, f"box {box}: max below min")
      tokens = []
      for _ in range(TOKENS_PER_INSTANCE):
        axis, value = reader.value([0, 1], "an instance token", 511)
        tokens.append(value + 512 * axis)
      rows.append([x, y, *box, *tokens])
    return rows


# Filling untokenized records with a SAM-instance tokenizer ---------------------------------

def _check_mask_tokenizer(tokenizer) -> None:
  """A SAM-instance tokenizer reads sam_mask at 64 px and writes 16 ids below 1024."""
  config = tokenizer.config
  made = (config.modality, config.resolution, config.tokens_per_image)
  if made != ("sam_mask", MASK_SIZE, TOKENS_PER_INSTANCE) or config.vocab_size > INSTANCE_VOCAB:
    raise UsageError(
        f"tokenizer {config.name or config.modality!r} is no SAM-instance tokenizer: one "
        f"reads sam_mask at {MASK_SIZE} px into {TOKENS_PER_INSTANCE} ids below "
        f"{INSTANCE_VOCAB}; this one reads {config.modality} at {config.resolution} px into "
        f"{config.tokens_per_image} ids of {config.vocab_size} (convert "
        "EPFL-VILAB/4M_tokenizers_sam-instance_1k_64 with fourm convert --from reference)")


def tokenize_records(records: Sequence[np.ndarray], tokenizer, *, batch_size: int = 64
                     ) -> list[np.ndarray]:
  """Untokenized records (sam_instance_masks) -> sam_instance records int32 [R, 22].

  `tokenizer`: a SAM-instance tokenizer's workdir (`fourm convert --from reference
  EPFL-VILAB/4M_tokenizers_sam-instance_1k_64`) or its loaded `VQTokenizer`. The masks of
  all records go through it in batches of `batch_size`, the last one padded, so it
  compiles once whatever the number of instances.
  """
  if isinstance(tokenizer, (str, os.PathLike)):
    from tokenizers_vq.train import load_tokenizer
    tokenizer = load_tokenizer(os.fspath(tokenizer))
  _check_mask_tokenizer(tokenizer)
  records = [np.asarray(record) for record in records]
  masks = [instance_masks(record)[has_instance(record)] for record in records]
  flat = np.concatenate(masks) if masks else np.zeros((0, MASK_SIZE, MASK_SIZE), np.uint8)
  ids = np.zeros((len(flat), TOKENS_PER_INSTANCE), np.int32)
  for start in range(0, len(flat), batch_size):
    batch = flat[start:start + batch_size]
    count = len(batch)
    padding = np.zeros((batch_size - count, MASK_SIZE, MASK_SIZE), batch.dtype)
    tokens = tokenizer.encode(np.concatenate([batch, padding]))
    ids[start:start + count] = tokens[:count].reshape(count, -1)
  bounds = np.cumsum([0] + [len(m) for m in masks])
  return [with_tokens(record, ids[a:b]) for record, a, b in zip(records, bounds, bounds[1:])]
