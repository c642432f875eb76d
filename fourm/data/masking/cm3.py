"""CM3's causal-masked objective for sequence modalities (Aghajanyan et al. 2022, used by
CM3leon): spans are cut out of the text, each replaced by a sentinel, and moved to the
end; the decoder then predicts the whole sequence left to right. A causal decoder so
sees, when it writes a span, the text on both sides of it.

One sample's decoder sequence, with "red" and "left of" cut out of
"a red cube left of a blue sphere .":

  [SOS] a [S_1] cube [S_2] a blue sphere . [EOS] [S_1] red [EOS] [S_2] left of [EOS]

* The number of spans is Poisson(1), clamped to 1..`max_spans` (16), and further to
  what the text can hold: spans are non-empty, cover text tokens only (never [EOS]), and
  never touch (two spans with nothing between them would be one span). Their positions
  are uniform: the 2n span boundaries are a uniformly drawn 2n-subset of the text's
  T + 1 gaps.
* Sentinels carry no loss (CM3leon zeroes it): where a span was cut from cannot be
  predicted, and which sentinel opens a moved span is fixed by the ones before it. The
  decoder still reads them. Each moved span ends in [EOS], which is scored: the model
  learns where a span stops, which is what lets generation fill a span and then stop.
* The sequence starts with [SOS] (the T5-style target starts with [S_1]), so the
  decoder knows from its first token which of the two objectives it writes.
* Sentinels are numbered from [S_1], as the T5-style spans are (`spans.FIRST_SPAN`).

Labels carry no loss where they are `NO_LOSS` (-1): the model's decoder reads
`target_labels < 0` as "predict nothing here" (fourm/models/CONTRACT.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from fourm.data.masking.spans import FIRST_SPAN
from fourm.errors import UsageError
from tokenizers_vq.text import TextSpecialIds

NO_LOSS = -1  # a label that is not predicted (the decoder still reads its token)
MAX_SPANS = 16


@dataclasses.dataclass(frozen=True)
class Cm3Objective:
  """Which sequence modalities are sometimes trained with CM3's objective instead of
  4M's T5-style span masking, and how often: in a sample where `modality` has text,
  with probability `rate` its whole text is a decoder target in CM3's form and none of
  it goes to the encoder (its input budget goes to the other modalities)."""
  modalities: tuple[str, ...] = ()
  rate: float = 0.5
  max_spans: int = MAX_SPANS

  def __post_init__(self):
    object.__setattr__(self, "modalities", tuple(self.modalities))
    if not 0.0 <= float(self.rate) <= 1.0:
      raise UsageError(f"cm3.rate is {self.rate!r}, expected a probability in [0, 1]")
    if isinstance(self.max_spans, bool) or not 1 <= int(self.max_spans):
      raise UsageError(f"cm3.max_spans is {self.max_spans!r}, expected an int >= 1")

  @classmethod
  def of_config(cls, config) -> Cm3Objective | None:
    """From a training config's `cm3` field (absent or without modalities: None)."""
    cm3 = config.get("cm3") if hasattr(config, "get") else None
    if not cm3 or not tuple(cm3.get("modalities", ())):
      return None
    return cls(tuple(cm3["modalities"]), float(cm3.get("rate", 0.5)),
               int(cm3.get("max_spans", MAX_SPANS)))

  def applies(self, names: Iterable[str]) -> tuple[str, ...]:
    return tuple(name for name in names if name in self.modalities)


def num_spans(text_length: int, rng: np.random.Generator, max_spans: int = MAX_SPANS) -> int:
  """Poisson(1) clamped to 1..max_spans, and to the (T + 1) // 2 non-touching spans a
  text of T tokens holds."""
  wanted = min(max(int(rng.poisson(1.0)), 1), max_spans)
  return min(wanted, (text_length + 1) // 2)


def draw_spans(text_length: int, count: int, rng: np.random.Generator) -> np.ndarray:
  """[count, 2] (start, end) of non-empty, non-touching spans in a text of
  `text_length` tokens, in order: the sorted 2 x count boundaries are a uniform subset
  of the gaps 0..text_length."""
  if count == 0:
    return np.zeros((0, 2), np.int64)
  if 2 * count > text_length + 1:
    raise ValueError(f"{count} non-touching spans do not fit {text_length} tokens")
  bounds = np.sort(rng.choice(text_length + 1, size=2 * count, replace=False))
  return bounds.reshape(count, 2)


def causal_masked(ids: np.ndarray, spans: np.ndarray,
                  text_ids: TextSpecialIds = TextSpecialIds()) -> tuple[np.ndarray, np.ndarray]:
  """(sequence, scored): the CM3 decoder sequence of `ids` (the text, ending in [EOS])
  with `spans` [n, 2] of its text tokens moved to the end, and for each of its
  predictions (position i predicts sequence[i + 1]) whether it carries a loss: not
  where it predicts a sentinel."""
  ids = np.asarray(ids, np.int32)
  if not len(ids) or ids[-1] != text_ids.eos:
    raise ValueError("causal_masked expects a text that ends in [EOS]")
  spans = np.asarray(spans, np.int64).reshape(-1, 2)
  if len(spans) and ((spans[:, 0] >= spans[:, 1]).any() or (spans[:, 1] > len(ids) - 1).any()
                     or (spans[1:, 0] <= spans[:-1, 1]).any()):
    raise ValueError(f"spans {spans.tolist()} are not non-touching spans of the "
                     f"{len(ids) - 1} text tokens")
  body, tail, cursor = [np.int32([text_ids.sos])], [], 0
  for number, (start, end) in enumerate(spans.tolist(), start=FIRST_SPAN):
    sentinel = np.int32([text_ids.sentinel(number)])
    body += [ids[cursor:start], sentinel]
    tail += [sentinel, ids[start:end], np.int32([text_ids.eos])]
    cursor = end
  body.append(ids[cursor:])
  sequence = np.concatenate(body + tail).astype(np.int32)
  return sequence, ~text_ids.is_sentinel(sequence[1:])


def teacher_forced(sequence: np.ndarray, scored: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """A decoder sequence -> (what the decoder reads, what each position predicts: the
  next token, NO_LOSS where `scored` is False)."""
  labels = sequence[1:].copy()
  if scored is not None:
    labels[~scored] = NO_LOSS
  return sequence[:-1], labels


def infill_prompt(text: np.ndarray, text_ids: TextSpecialIds = TextSpecialIds()
                  ) -> tuple[np.ndarray, int]:
  """The decoder prefix that asks a CM3-trained model to fill the gaps of `text` (ids,
  each gap one sentinel, any numbers): (prefix "[SOS] text-with-[S_1]..[S_n] [EOS] [S_1]",
  n). Gaps are renumbered from [S_1] in order; the text's [EOS] is added if missing."""
  text = np.asarray(text, np.int32)
  text = text[text != text_ids.pad]
  gaps = text_ids.is_sentinel(text)
  if not gaps.any():
    raise UsageError("the text has no gap ([S_1], ...) to fill in")
  text = text.copy()
  text[gaps] = text_ids.first_sentinel + FIRST_SPAN + np.arange(int(gaps.sum()))
  if text[-1] != text_ids.eos:
    text = np.append(text, np.int32(text_ids.eos))
  prefix = np.concatenate([[text_ids.sos], text, [text_ids.sentinel(FIRST_SPAN)]])
  return prefix.astype(np.int32), int(gaps.sum())
