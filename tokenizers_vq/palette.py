"""4M-21's color palette as text tokens.

A palette record is uint8 [K, 3]: K colors (1 to 7) as RGB, most prominent first (the
labeller's order). It is written the way the reference's ColorPaletteTransform writes
it, its count first so that a reader knows where the colors end:

    v1=<K> v0=<r1> v0=<g1> v0=<b1> v0=<r2> ...      (3K + 1 tokens, at most 22)

The reference picks one of its precomputed palettes of 1..7 colors at random per sample;
a fourm record holds the palette to write (draw the length when labelling).
"""

from __future__ import annotations

import numpy as np

from fourm.errors import RecordError
from tokenizers_vq.value_words import Malformed, WordCodec, WordReader, value_word

MAX_COLORS = 7


class PaletteCodec(WordCodec):
  name = "color_palette"

  def words(self, palette) -> list[str]:
    colors = np.asarray(palette)
    if colors.ndim != 2 or colors.shape[1] != 3 or not 1 <= len(colors) <= MAX_COLORS:
      raise RecordError(f"expected [K, 3] RGB colors with K in 1..{MAX_COLORS}, got shape "
                        f"{list(colors.shape)}", field=self.name)
    if colors.dtype.kind not in "iu" or colors.min() < 0 or colors.max() > 255:
      raise RecordError("colors must be integers in 0..255", field=self.name)
    return [value_word(1, len(colors))] + [value_word(0, c) for c in colors.reshape(-1)]

  def parse(self, reader: WordReader, strict: bool) -> tuple[np.ndarray, int]:
    """uint8 [K, 3]. Lenient: keeps the whole colors read before anything out of place
    (a cut-off or overlong palette counts as one skipped piece)."""
    values: list[int] = []
    try:
      _, count = reader.value([1], "the number of colors", MAX_COLORS)
      if count == 0:
        raise Malformed(0, "a palette has at least one color (v1=0)")
      for _ in range(3 * count):
        values.append(reader.value([0], "a color channel", 255)[1])
      if not reader.done():
        raise Malformed(reader.position, f"expected the end after {count} colors, got "
                                         f"{reader.describe()}")
      skipped = 0
    except Malformed:
      if strict:
        raise
      skipped = 1
    kept = len(values) // 3 * 3
    return np.asarray(values[:kept], np.uint8).reshape(-1, 3), skipped
