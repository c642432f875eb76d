"""4M-21's human poses (SMPL parameters from a pose estimator) as text tokens.

A record is float32 [N, 34], one row per person, its columns:

    0:4    box (xmin, ymin, xmax, ymax) in [0, 1] of the image
    4:13   global orientation, a 3x3 rotation matrix row by row, in [-1, 1]
    13:21  the body pose as 8 token ids of the pose tokenizer (0..1023, whole numbers)
    21:31  the SMPL shape (betas), about [-3, 3]
    31:34  the weak-perspective camera, [-1, 19]

It is written the way the reference's HumanPoseTransform writes it, 39 tokens a person:

    human v0=<xmin> v1=<ymin> v2=<xmax> v3=<ymax>
      pose v0|v1=<token> x8   global v0=<r> x9   camera v0=<c> x3   shape v0=<b> x10

with box bins round(x * 999), orientation round(499.5 r + 499.5), pose tokens below 512
as v0=t and above as v1=t-512, camera round(49.95 c + 49.95) after clipping to [-1, 19],
shape round(166.5 b + 499.5). A record with no one is the single word `none`. fourm
clips every bin to 0..999 (the reference would write words outside the vocabulary for
an orientation or shape out of range). The reference shuffles the order of the four
groups per sample as augmentation; fourm writes them in the order above (the
reference's identity permutation) and reads any order back. At 263 tokens (the
published embeddings' length) six people fit.
"""

from __future__ import annotations

import numpy as np

from fourm.errors import RecordError
from tokenizers_vq.value_words import (MAX_VALUE, Malformed, WordCodec, WordReader,
                                       parse_pieces, token_value, value_word)

COLUMNS = {"box": slice(0, 4), "global": slice(4, 13), "pose": slice(13, 21),
           "betas": slice(21, 31), "camera": slice(31, 34)}
WIDTH = 34
BOX_BINS = 1000
CAMERA_RANGE = (-1.0, 19.0)
# Each group's word, its columns, and value <-> bin (scale, offset): bin = scale*v + offset.
_GROUPS = {"pose": ("pose", None), "global": ("global", (499.5, 499.5)),
           "camera": ("camera", (49.95, 49.95)), "shape": ("betas", (166.5, 499.5))}
ORDER = ("pose", "global", "camera", "shape")


def _bins(values: np.ndarray, scale: float, offset: float) -> list[int]:
  binned = np.rint(scale * np.asarray(values, np.float64) + offset)
  return np.clip(binned, 0, MAX_VALUE).astype(np.int64).tolist()


class HumanPoseCodec(WordCodec):
  name = "human_poses"

  def words(self, poses) -> list[str]:
    people = np.asarray(poses)
    if people.ndim != 2 or people.shape[1] != WIDTH or people.dtype.kind != "f":
      raise RecordError(f"expected float [N, {WIDTH}] (box, global orientation, pose tokens, "
                        f"betas, camera), got {people.dtype} {list(people.shape)}",
                        field=self.name)
    if not np.isfinite(people).all():
      raise RecordError("contains NaN or Inf", field=self.name)
    if len(people) == 0:
      return ["none"]
    boxes, tokens = people[:, COLUMNS["box"]], people[:, COLUMNS["pose"]]
    if boxes.min() < 0 or boxes.max() > 1:
      raise RecordError("boxes must be within [0, 1]", field=self.name)
    if (tokens != np.round(tokens)).any() or tokens.min() < 0 or tokens.max() > 1023:
      raise RecordError("pose tokens (columns 13:21) must be whole numbers in 0..1023",
                        field=self.name)
    words = []
    for person in people.astype(np.float64):
      words.append("human")
      box = np.rint(person[COLUMNS["box"]] * (BOX_BINS - 1)).astype(np.int64)
      words += [value_word(axis, value) for axis, value in enumerate(box.tolist())]
      for group in ORDER:
        column, scaling = _GROUPS[group]
        values = person[COLUMNS[column]]
        if column == "camera":
          values = np.clip(values, *CAMERA_RANGE)
        words.append(group)
        if scaling is None:
          words += [token_value(t) for t in np.rint(values).astype(np.int64).tolist()]
        else:
          words += [value_word(0, b) for b in _bins(values, *scaling)]
    return words

  def parse(self, reader: WordReader, strict: bool) -> tuple[np.ndarray, int]:
    """float32 [N, 34]; values are the bins read back (exact up to half a bin)."""
    if reader.peek() == "none":
      reader.word("none")
      if not reader.done() and strict:
        raise Malformed(reader.position, f"expected the end after 'none', got "
                                         f"{reader.describe()}")
      return np.zeros((0, WIDTH), np.float32), int(not reader.done())
    people, skipped = parse_pieces(reader, strict, self._person, starts=("human",))
    return np.asarray(people, np.float32).reshape(-1, WIDTH), skipped

  def _person(self, reader: WordReader) -> np.ndarray:
    row = np.zeros(WIDTH, np.float64)
    reader.word("human")
    for axis in range(4):
      row[axis] = reader.value([axis], "the box")[1] / (BOX_BINS - 1)
    seen = set()
    for _ in ORDER:
      group = reader.peek()
      if group not in _GROUPS or group in seen:
        raise Malformed(reader.position, f"expected one of {sorted(set(ORDER) - seen)}, got "
                                         f"{reader.describe()}")
      seen.add(group)
      reader.word(group)
      column, scaling = _GROUPS[group]
      columns = range(WIDTH)[COLUMNS[column]]
      for index in columns:
        if scaling is None:
          axis, value = reader.value([0, 1], "a pose token", 511)
          row[index] = value + 512 * axis
        else:
          row[index] = (reader.value([0], group)[1] - scaling[1]) / scaling[0]
    return row
