"""The per-sample transform: a record in, the masked-batch contract out (see the
package docstring)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from fourm import modalities
from fourm.data import augment
from fourm.data.masking.budgets import allocate, draw_proportions, redistribute
from fourm.data.masking.cm3 import (Cm3Objective, causal_masked, draw_spans, num_spans,
                                    teacher_forced)
from fourm.data.masking.entries import ValueReader, checked_ids, describe
from fourm.data.masking.mixtures import AlphasMixture, spec_or_error
from fourm.data.masking.spans import FIRST_SPAN, choose_keep_mask, span_mask, truncate_target
from fourm.errors import RecordError, UsageError
from tokenizers_vq.text import TextSpecialIds

Kind = modalities.Kind
BUDGET_RULES = ("fourm", "reference")


class MaskSample:
  """The 4M masking of one sample: `masked = MaskSample(...)(sample, rng)`.

  `sample` is a record after augmentation: token ids int [G, G] or [N] under the name of
  IMAGE_TOKENS / GLOBAL modalities; uint8 [R, R, 3] under "rgb" for PIXELS; float32
  [G, G, D] under the raw source's name for FEATURE_MAPs; for SEQUENCEs either int token
  ids (the text's own, without [EOS]; trailing PADs are dropped) or a raw value (a
  caption str, a boxes dict) that `sequence_encoders[name]` turns into such ids; float
  [L, F] vectors under the name of SEQUENCE_EMBEDDINGS (t5_caption). These are span
  masked as the reference does: the encoder sees the kept vectors with one zero vector
  in place of each masked run, packed at the front; they are never targets.
  A modality the sample lacks gets empty masks, and the budgets go to the others.

  The result has one entry per name in the contract format (module docstring) plus the
  sample's "meta" if it has one; other fields are dropped. The same sample and rng state
  give the same result.
  """

  def __init__(self, names: Iterable[str], layout: modalities.Layout, input_budget: int,
               target_budget: int, mixture: AlphasMixture, *,
               text_ids: TextSpecialIds = TextSpecialIds(),
               sequence_encoders: Mapping[str, Callable[[Any], np.ndarray]] | None = None,
               pixel_normalization: str = "imagenet", budget_rule: str = "fourm",
               input_only: Iterable[str] = (), vocab_sizes: Mapping[str, int] | None = None,
               cm3: Cm3Objective | None = None):
    """`budget_rule`: "fourm" gives what a cap or a short text leaves over to the
    modalities with room, and counts a sequence's decoder predictions; "reference"
    splits as apple/ml-4m's UnifiedMasking does: a sequence's caps are its max_length
    whatever the text's length, what they cut is lost, and its target budget counts
    its decoder tokens including the last, which is only ever a label
    (docs/interop.md measures both against the reference). `input_only`: modalities
    that are never targets here, though their specs allow it (the model's own roles).
    `vocab_sizes`: the model's vocabularies where they differ from the registry's
    (config.model.vocab_sizes); token ids are checked against them. `cm3`: sequence
    modalities that are sometimes targets in CM3's causal-masked form instead (cm3.py)."""
    if budget_rule not in BUDGET_RULES:
      raise UsageError(f"budget_rule is {budget_rule!r}, expected one of {BUDGET_RULES}")
    self.reference_budgets = budget_rule == "reference"
    self.names = tuple(names)
    if not self.names or len(set(self.names)) != len(self.names):
      raise UsageError(f"masking needs distinct modality names, got {list(self.names)}")
    self.specs = tuple(modalities.with_vocab_size(spec_or_error(name, "masking"),
                                                  dict(vocab_sizes or {}))
                       for name in self.names)
    for budget, what in ((input_budget, "input"), (target_budget, "target")):
      if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise UsageError(f"{what} budget must be an int >= 0, got {budget!r}")
    self.layout, self.text_ids = layout, text_ids
    self.input_budget, self.target_budget = int(input_budget), int(target_budget)
    self.mixture = mixture
    self.sequence_encoders = dict(sequence_encoders or {})
    self.reader = ValueReader(layout, pixel_normalization)
    self.pixel_normalization = pixel_normalization

    self.num_tokens = np.array([spec.num_tokens(layout) for spec in self.specs], np.int64)
    self._is_sequence = np.array([spec.kind == Kind.SEQUENCE for spec in self.specs])
    self._sequences = tuple(np.flatnonzero(self._is_sequence))
    self._is_embedding_sequence = np.array(
        [spec.kind == Kind.SEQUENCE_EMBEDDINGS for spec in self.specs])
    self._embedding_sequences = tuple(np.flatnonzero(self._is_embedding_sequence))
    input_only = set(input_only)
    if input_only - set(self.names):
      raise UsageError(f"input_only names {sorted(input_only - set(self.names))}, which are "
                       f"not among the modalities {list(self.names)}")
    self._can_target = np.array([spec.can_target and spec.name not in input_only
                                 for spec in self.specs])
    self._check_specs()
    self._check_encoders()
    self._input_alphas, self._target_alphas, self._keep = self._component_tables()
    self.cm3 = cm3
    self._cm3 = self._check_cm3(cm3)
    self._warned_truncation: set[str] = set()

  # Configuration checks -------------------------------------------------------------------

  def _check_specs(self) -> None:
    ids = self.text_ids
    for spec in self.specs:
      if spec.kind == Kind.FEATURE_MAP and not spec.source.channels:
        raise UsageError(f"feature map {spec.name!r}: its raw source {spec.source.name!r} "
                         "must say how many channels a feature vector has")
      if spec.kind != Kind.SEQUENCE:
        continue
      if ids.first_sentinel + ids.num_sentinels > spec.vocab_size:
        raise UsageError(f"{spec.name!r}: sentinels up to id "
                         f"{ids.first_sentinel + ids.num_sentinels - 1} do not fit its "
                         f"vocabulary of {spec.vocab_size}")
      # A text of L - 1 tokens has at most L // 2 spans, closed by [S_(L//2 + 1)].
      if FIRST_SPAN + spec.max_length // 2 >= ids.num_sentinels:
        raise UsageError(f"{spec.name!r}: max_length {spec.max_length} can need "
                         f"{spec.max_length // 2 + 1} sentinels, the vocabulary has "
                         f"{ids.num_sentinels}")

  def _check_encoders(self) -> None:
    for name, encoder in self.sequence_encoders.items():
      if name not in self.names or modalities.get(name).kind != Kind.SEQUENCE:
        raise UsageError(f"sequence encoder given for {name!r}, which is not one of the "
                         "sequence modalities masked here "
                         f"{[n for n, s in zip(self.names, self._is_sequence) if s]}")
      if not callable(encoder):
        raise UsageError(f"sequence encoder for {name!r} is not callable: {encoder!r}")

  def _check_cm3(self, cm3: Cm3Objective | None) -> tuple[int, ...]:
    """The indices of the modalities CM3 may apply to."""
    if cm3 is None or not cm3.modalities:
      return ()
    if self.reference_budgets:
      raise UsageError("the CM3 objective needs budget_rule 'fourm' (masking_budgets): "
                       "the reference's rule has no CM3")
    chosen = []
    for name in cm3.modalities:
      if name not in self.names:
        raise UsageError(f"cm3.modalities names {name!r}, which is not among the modalities "
                         f"{list(self.names)}")
      index = self.names.index(name)
      if not self._is_sequence[index] or not self._can_target[index]:
        raise UsageError(f"cm3 applies to sequence modalities that are targets; {name!r} is "
                         "not one")
      chosen.append(index)
    return tuple(chosen)

  def _component_tables(self) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    """Per mixture component, the alphas and keep schemes in the order of `names`."""
    missing = set(self.names) - set(self.mixture.names)
    if missing:
      raise UsageError(f"the alphas mixture has no alphas for {sorted(missing)} "
                       f"(it has {sorted(self.mixture.names)})")
    inputs, targets, keeps = [], [], []
    for index, component in enumerate(self.mixture.components):
      alpha_in = np.array([component.input_alphas[name] for name in self.names])
      alpha_tg = np.array([component.target_alphas[name] for name in self.names])
      for alphas, budget, what in ((alpha_in, self.input_budget, "input"),
                                   (alpha_tg, self.target_budget, "target")):
        if budget > 0 and not (alphas > 0).any():
          raise UsageError(f"mixture component {index} gives every modality of "
                           f"{list(self.names)} {what} alpha 0: its {budget} {what} tokens "
                           "could go nowhere")
      inputs.append(alpha_in)
      targets.append(alpha_tg)
      keeps.append(tuple(component.keep.get(name, "random") for name in self.names))
    return np.stack(inputs), np.stack(targets), keeps

  # Masking -------------------------------------------------------------------------------

  def __call__(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    component = self.mixture.sample_index(rng)
    alpha_in, alpha_tg = self._input_alphas[component], self._target_alphas[component]
    keep_schemes = self._keep[component]
    values = [self._read(spec, sample) for spec in self.specs]
    chunks = {}  # sequence index -> each token's chunk, for codecs that mask in chunks
    for i in self._sequences:
      if values[i] is not None:
        values[i], chunks[i] = values[i]
    present = np.array([value is not None for value in values])
    # CM3 (when configured) is drawn per sample and modality, only for those it may
    # apply to, so that a run without it draws exactly what it drew before.
    causal = {i for i in self._cm3 if present[i] and rng.random() < self.cm3.rate}
    dense_eligible = present & ~self._is_sequence & ~self._is_embedding_sequence

    # Inputs: the Dirichlet split, then span masking, whose unused tokens go to the
    # dense modalities (a sequence never needs more than its text's length).
    spill = not self.reference_budgets
    capacity_in = np.where(present, self.num_tokens, 0)
    for i in self._sequences + self._embedding_sequences:
      if present[i] and spill:
        capacity_in[i] = len(values[i])
    for i in causal:  # CM3: the whole text is the target, none of it an input
      capacity_in[i] = 0
    proportions_in = draw_proportions(alpha_in, rng)
    n_in = allocate(self.input_budget, proportions_in, alpha_in, capacity_in, rng,
                    spill=spill)
    spans = {}  # sequence index -> (encoder ids, decoder sequence, its scored predictions)
    for i in self._sequences:
      if present[i] and i in causal:
        spans[i] = (values[i][:0], *self._causal_masked(values[i], rng))
      elif present[i]:
        keep = choose_keep_mask(len(values[i]), int(n_in[i]), keep_schemes[i], rng,
                                chunks[i])
        inputs, target = span_mask(values[i], keep, self.text_ids)
        if n_in[i] == 0:
          inputs = inputs[:0]
        spans[i] = (inputs, target, None)
      if present[i]:
        n_in[i] = len(spans[i][0])
    packed = {}
    for i in self._embedding_sequences:
      if present[i] and n_in[i]:
        keep = choose_keep_mask(len(values[i]), int(n_in[i]), keep_schemes[i], rng)
        packed[i] = _pack_kept_vectors(values[i], keep)
        n_in[i] = len(packed[i])
    if (spans or packed) and spill:
      n_in = redistribute(n_in, self.input_budget - int(n_in.sum()), proportions_in,
                          capacity_in, dense_eligible & (alpha_in > 0), rng)

    # Targets: dense ones from the positions the inputs left, sequences up to their
    # full decoder sequence, cut to what they get.
    capacity_tg = np.where(present & self._can_target, self.num_tokens - n_in, 0)
    for i, (_, target, _) in spans.items():
      room = min(len(target) - 1, self.num_tokens[i]) if spill else self.num_tokens[i]
      capacity_tg[i] = room if self._can_target[i] else 0
    proportions_tg = draw_proportions(alpha_tg, rng)
    n_tg = allocate(self.target_budget, proportions_tg, alpha_tg, capacity_tg, rng,
                    spill=spill)
    for i, (inputs, target, scored) in spans.items():
      # The reference's budget counts decoder tokens, one more than the predictions.
      predictions = int(n_tg[i]) if spill else max(int(n_tg[i]) - 1, 0)
      if i in causal:  # left to right: what fits is a prefix
        target, scored = target[:predictions + 1], scored[:predictions]
      else:
        target = truncate_target(target, predictions, rng, self.text_ids)
      spans[i] = (inputs, target, scored)
      n_tg[i] = max(len(target) - 1, 0)
    if spans and spill:
      n_tg = redistribute(n_tg, self.target_budget - int(n_tg.sum()), proportions_tg,
                          capacity_tg, dense_eligible & (alpha_tg > 0), rng)

    masked = {}
    for i, spec in enumerate(self.specs):
      if spec.kind == Kind.SEQUENCE:
        masked[spec.name] = self._sequence_entry(spec, spans.get(i))
      elif spec.kind == Kind.SEQUENCE_EMBEDDINGS:
        masked[spec.name] = self._embedding_sequence_entry(spec, packed.get(i))
      else:
        masked[spec.name] = self._dense_entry(spec, values[i], int(n_in[i]), int(n_tg[i]),
                                              rng)
    if "meta" in sample:
      masked["meta"] = sample["meta"]
    return masked

  def _dense_entry(self, spec: modalities.ModalitySpec, value: np.ndarray | None,
                   n_in: int, n_tg: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = spec.num_tokens(self.layout)
    input_mask, target_mask = np.zeros(n, bool), np.zeros(n, bool)
    if n_in or n_tg:
      order = rng.permutation(n)
      input_mask[order[:n_in]] = True
      target_mask[order[n_in:n_in + n_tg]] = True
    if value is None:
      value = self._empty_tokens(spec)
    return {"input_mask": input_mask, "target_mask": target_mask, "tokens": value}

  def _empty_tokens(self, spec: modalities.ModalitySpec) -> np.ndarray:
    n = spec.num_tokens(self.layout)
    if spec.kind == Kind.PIXELS:
      size = spec.image_size(self.layout)
      return np.zeros((size, size, 3), np.float32)
    if spec.kind == Kind.FEATURE_MAP:
      return np.zeros((n, spec.source.channels), np.float32)
    return np.zeros(n, np.int32)

  def _embedding_sequence_entry(self, spec: modalities.ModalitySpec,
                                packed: np.ndarray | None) -> dict[str, np.ndarray]:
    length = spec.max_length
    entry = {"tokens": np.zeros((length, spec.source.channels), np.float32),
             "input_mask": np.zeros(length, bool), "target_mask": np.zeros(length, bool)}
    if packed is not None:
      entry["tokens"][:len(packed)] = packed
      entry["input_mask"][:len(packed)] = True
    return entry

  def _causal_masked(self, ids: np.ndarray, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    text_length = len(ids) - 1  # spans never take the [EOS]
    count = num_spans(text_length, rng, self.cm3.max_spans)
    return causal_masked(ids, draw_spans(text_length, count, rng), self.text_ids)

  def _sequence_entry(self, spec: modalities.ModalitySpec,
                      span: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None
                      ) -> dict[str, np.ndarray]:
    length, pad = spec.max_length, self.text_ids.pad
    entry = {"input_mask": np.zeros(length, bool), "target_mask": np.zeros(length, bool),
             "input_tokens": np.full(length, pad, np.int32),
             "target_tokens": np.full(length, pad, np.int32),
             "target_labels": np.full(length, pad, np.int32)}
    if span is not None:
      inputs, target, scored = span
      tokens, labels = teacher_forced(target, scored)
      entry["input_tokens"][:len(inputs)] = inputs
      entry["input_mask"][:len(inputs)] = True
      entry["target_tokens"][:len(tokens)] = tokens
      entry["target_labels"][:len(labels)] = labels
      entry["target_mask"][:len(tokens)] = True
    return entry

  # Reading the sample ----------------------------------------------------------------------

  def _read(self, spec: modalities.ModalitySpec, sample: Mapping[str, Any]):
    """The modality's content ready to mask, or None when the sample lacks it."""
    key = spec.source.name if spec.kind in (Kind.PIXELS, Kind.FEATURE_MAP) else spec.name
    value = sample.get(key)
    if value is None:
      return None
    if spec.kind == Kind.PIXELS:
      size = spec.image_size(self.layout)
      if spec.resolution is not None and isinstance(value, np.ndarray) and \
          value.shape[:2] != (size, size):
        # rgb@448 beside rgb: the sample's one image, resized for the variant.
        value = augment.center_crop(key, value, size)
      return self.reader.pixels(key, value, size)
    if spec.kind == Kind.FEATURE_MAP:
      return self.reader.features(spec, key, value)
    if spec.kind == Kind.SEQUENCE:
      return self._read_sequence(spec, value)
    if spec.kind == Kind.SEQUENCE_EMBEDDINGS:
      return self.reader.embedding_sequence(spec, value)
    return self.reader.token_grid(spec, value)

  def _read_sequence(self, spec: modalities.ModalitySpec, value: Any
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """(the ids with [EOS], each id's chunk or None): a codec with `chunks` (metadata)
    is masked a chunk at a time, as the reference's chunk span masking does."""
    # Arrays are the text's token ids, unless the raw value itself is an array (a
    # palette of colors, say): then, like a str or a boxes dict, the codec makes the ids.
    raw_is_array = spec.source.form not in (modalities.Form.TEXT, modalities.Form.BOXES)
    chunk_of = None
    if isinstance(value, (np.ndarray, list, tuple)) and not raw_is_array:
      ids = np.asarray(value)
      if ids.size == 0:
        ids = ids.astype(np.int32)
    else:  # a raw value (text, boxes, ...): its codec makes the ids
      encoder = self.sequence_encoders.get(spec.name)
      if encoder is None:
        raise UsageError(f"{spec.name!r} holds a raw {type(value).__name__}; give "
                         f"MaskSample a sequence_encoders[{spec.name!r}] to tokenize it")
      if hasattr(encoder, "chunks"):
        pieces = [np.asarray(piece, np.int32) for piece in encoder.chunks(value)]
        ids = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
        chunk_of = np.repeat(np.arange(len(pieces)), [len(p) for p in pieces])
      else:
        ids = np.asarray(encoder(value))
    if ids.ndim != 1:
      raise RecordError(f"expected a 1-D sequence of token ids, got {describe(ids)}",
                        field=spec.name)
    ids = checked_ids(spec, ids)
    ids = ids[:len(ids) - _trailing_count(ids, self.text_ids.pad)]
    if (ids == self.text_ids.pad).any() or self.text_ids.is_sentinel(ids).any():
      raise RecordError("the text's token ids contain [PAD] or sentinel ids, which the "
                        "span masking reserves", field=spec.name)
    ids = np.append(ids, np.int32(self.text_ids.eos))
    if chunk_of is not None:  # [EOS] is a chunk of its own, as in the reference
      chunk_of = np.append(chunk_of, chunk_of[-1] + 1 if len(chunk_of) else 0)
    limit = spec.max_length - 1
    if len(ids) > limit:
      if spec.name not in self._warned_truncation:
        self._warned_truncation.add(spec.name)
        warnings.warn(f"{spec.name!r}: texts longer than {limit} tokens (with [EOS]) are "
                      f"truncated to fit max_length {spec.max_length}", stacklevel=3)
      if chunk_of is None:
        ids = ids[:limit]
      else:  # whole chunks only
        ends = np.cumsum(np.bincount(chunk_of))
        whole = ends[chunk_of] <= limit
        ids, chunk_of = ids[whole], chunk_of[whole]
    return ids, chunk_of


def _pack_kept_vectors(vectors: np.ndarray, keep: np.ndarray) -> np.ndarray:
  """The encoder's view of span-masked vectors: kept ones in order, one zero vector in
  place of each run of masked ones (the reference's placeholder for a sentinel)."""
  starts = ~keep & np.concatenate([[True], keep[:-1]])  # first vector of each masked run
  chosen = keep | starts
  packed = vectors[chosen].copy()
  packed[starts[chosen]] = 0.0
  return packed


def _trailing_count(ids: np.ndarray, value: int) -> int:
  """How many entries at the end of `ids` equal `value`."""
  differs = np.flatnonzero(ids != value)
  return len(ids) - (differs[-1] + 1 if differs.size else 0)
