"""Per-sample 4M masking: Dirichlet input/target budgets, span masking with sentinels.

`MaskSample(names, layout, input_budget, target_budget, mixture)` is the per-sample
transform the input pipeline runs after augmentation (`transform(sample, rng)`). It
turns a record into the masked-batch contract below, with numpy only (it runs in the
data loader, once per sample).

## The masked-batch contract (condensed from fourm/models/CONTRACT.md)

One sample is a dict keyed by modality name; `collate` later adds a leading batch axis.
Shapes depend only on the config, so the train step compiles once.

Dense modality (IMAGE_TOKENS, GLOBAL) with N tokens (grids flattened row-major):
  "tokens" int32 [N], "input_mask" bool [N], "target_mask" bool [N]; the two masks
  never overlap.
PIXELS (rgb): "tokens" float32 [R, R, 3], "input_mask" bool [N] over its patches,
  "target_mask" all False [N].
FEATURE_MAP: "tokens" float32 [N, D], "input_mask" bool [N], "target_mask" all False.
SEQUENCE (caption, det), L = spec.max_length, all right-padded with PAD:
  "input_tokens" int32 [L]   the visible text, one sentinel in place of each masked span
  "input_mask" bool [L]      True on the non-padding positions of input_tokens
  "target_tokens" int32 [L]  decoder inputs (teacher forcing): each span after its sentinel
  "target_labels" int32 [L]  what each decoder position predicts: the next token
  "target_mask" bool [L]     True on the decoder positions that carry a prediction
Budgets: the input_mask sums over modalities == input_budget and the target_mask sums ==
target_budget, unless the sample has fewer tokens to give (then as many as it has).
Text ids: PAD=0, UNK=1, SOS=2, EOS=3, sentinels [S_i] = 4 + i (`TextSpecialIds`).

Example, text "a red cube left of a blue sphere ." with "red" and "left of a blue sphere"
masked (the reference numbers spans from [S_1] and closes the target with the next
sentinel, see below):
  input_tokens  a [S_1] cube [S_2] . [EOS]
  target_tokens [S_1] red [S_2] left of a blue sphere
  target_labels red [S_2] left of a blue sphere [S_3]

## What it does, and where it follows apple/ml-4m (fourm/data/masking.py, UnifiedMasking)

* A mixture component is drawn by `sampling_weights` (uniformly without), then input
  and target proportions ~ Dirichlet(alphas). Counts are floor(budget * proportions);
  the few tokens the floors leave go one at a time to the argmax of further Dirichlet
  draws (`input_token_budget`, `target_token_budget`), which slightly favours the
  largest alphas (~1 pp of a 64-token budget). Alphas of 0 are left out of the
  Dirichlet altogether (the reference clamps them to 1e-9 instead, which almost always,
  but not always, gives them nothing).
* Per-modality caps: what the sample actually has. Dense targets can only take tokens
  the inputs left (`max_tokens_remaining`). Unlike the reference, which clamps and drops
  the excess, what a cap leaves over goes to the modalities that still have room, in
  proportion to the draw; so does what a sequence's span masking does not use.
* Dense modalities: n_in random positions are the input, n_tg positions drawn from the
  remaining ones are the target (`image_mask`).
* Sequences: the text's ids get [EOS] appended (the tokenizer adds no [SOS]); each token
  is kept with probability keep_prob (`keep`: 'random' ~ U(0, 1), 'all' = 1, 'binary'
  = 0 or 1); runs of masked tokens become spans; keep_prob is multiplied by 0.9, masks
  redrawn, until the input fits its budget. A zero input budget puts the whole text in
  the target. The decoder sequence is [S_1] span_1 [S_2] ... span_k [S_k+1]; the decoder
  predicts each token from the previous ones (4M's `cat_decoder_tensors`: inputs
  ids[:-1], labels ids[1:]). A target over budget is cut to a window starting at a
  random sentinel, or else the longest suffix starting at a sentinel that fits
  (`sequence_mask`, `simple_span_masking`).

Deliberate deviations from the reference:
* A sequence's target budget counts decoder predictions (target_mask.sum()), as the
  contract says; the reference counts the decoder tokens including the last one, which
  only ever serves as a label (one wasted decoder slot per sequence).
* Texts are cut to L - 1 tokens (with [EOS]; the reference cuts to L) so that the fully
  masked target, [S_1] text [S_2], still fits the L decoder positions. A warning says
  so, once per modality.
* The contract's own example numbers spans from [S_0] and ends the labels with [EOS];
  the reference (and this module) starts at [S_1] and ends with the closing sentinel,
  and [EOS] is the text's last token. Reference checkpoints generate that way.
* RGB pixels are normalised with the ImageNet mean/std by default, as the reference 4M
  models are trained (`RGBTransform(imagenet_default_mean_and_std=True)`); the
  contract's [-1, 1] is `pixel_normalization="inception"` (mean = std = 0.5).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fourm import modalities
from fourm.errors import RecordError, UsageError

Kind = modalities.Kind

# How a sequence decides which of its tokens the encoder sees (the reference's `keep`).
KEEP_SCHEMES = ("random", "all", "binary")
# Each failed try at fitting a sequence's input into its budget lowers keep_prob by this.
KEEP_PROB_DECAY = 0.9
# The reference numbers spans from [S_1]; [S_0] is never used in training.
FIRST_SPAN = 1
# rgb input normalisations (mean, std) of the reference: "imagenet" is what its 4M
# models are trained with, "inception" (= [-1, 1]) what its tokenizers use.
PIXEL_STATS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # = [-1, 1]
}


@dataclasses.dataclass(frozen=True)
class TextSpecialIds:
  """Special ids of the text vocabulary (defaults: the reference 4M WordPiece vocab)."""
  pad: int = 0
  unk: int = 1
  sos: int = 2
  eos: int = 3
  first_sentinel: int = 4
  num_sentinels: int = 200

  def sentinel(self, i: int) -> int:
    """The id of [S_i]."""
    if not 0 <= i < self.num_sentinels:
      raise ValueError(f"sentinel [S_{i}] out of range: the vocabulary has "
                       f"[S_0]..[S_{self.num_sentinels - 1}]")
    return self.first_sentinel + i

  def is_sentinel(self, ids: np.ndarray) -> np.ndarray:
    return (ids >= self.first_sentinel) & (ids < self.first_sentinel + self.num_sentinels)


# Budget splitting ------------------------------------------------------------------------


def draw_proportions(alphas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Proportions ~ Dirichlet over the positive alphas; exactly 0 where alpha is 0."""
  alphas = np.asarray(alphas, np.float64)
  proportions = np.zeros(len(alphas))
  positive = alphas > 0
  if positive.any():
    proportions[positive] = rng.dirichlet(alphas[positive])
  return proportions


def allocate(budget: int, proportions: np.ndarray, alphas: np.ndarray,
             capacities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Token counts for one drawn set of proportions (see `split_budget`)."""
  alphas = np.asarray(alphas, np.float64)
  capacities = np.asarray(capacities, np.int64)
  positive = alphas > 0
  counts = np.zeros(len(alphas), np.int64)
  if budget <= 0 or not positive.any():
    return counts
  counts[:] = np.floor(budget * proportions)
  rest = budget - int(counts.sum())
  if rest > 0:
    # Like the reference: the tokens the floors leave go one by one to the argmax of
    # fresh Dirichlet draws, which only ever picks a positive alpha. This favours large
    # alphas a little (about half a token per sample: ~1 pp of a 64-token budget with
    # alphas like 0.5, 1, 3); kept for fidelity to the reference's distribution.
    winners = rng.dirichlet(alphas[positive], size=rest).argmax(axis=1)
    counts[np.flatnonzero(positive)] += np.bincount(winners, minlength=int(positive.sum()))
  counts = np.minimum(counts, capacities)
  return redistribute(counts, budget - int(counts.sum()), proportions, capacities,
                      positive, rng)


def redistribute(counts: np.ndarray, leftover: int, weights: np.ndarray,
                 capacities: np.ndarray, eligible: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
  """Adds `leftover` tokens to the eligible modalities with room, in proportion to
  `weights` (evenly among them where the weights of all of them are 0)."""
  counts = counts.copy()
  while leftover > 0:
    room = capacities - counts
    open_ = eligible & (room > 0)
    if not open_.any():
      break
    share = np.where(open_, weights, 0.0)
    if share.sum() <= 0:  # the draw gave every open modality nothing (tiny alphas)
      share = open_.astype(np.float64)
    # Each token lands on an open modality, so every pass either places them all or
    # fills at least one modality: at most one pass per modality.
    extra = np.minimum(rng.multinomial(leftover, share / share.sum()), room)
    counts += extra
    leftover -= int(extra.sum())
  return counts


def split_budget(budget: int, alphas: np.ndarray, capacities: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
  """Splits `budget` tokens over modalities: proportions ~ Dirichlet(alphas), capped.

  Modalities with alpha 0 get exactly 0. The total is min(budget, sum of the
  capacities of the positive-alpha modalities). Deterministic given `rng`.
  """
  proportions = draw_proportions(alphas, rng)
  return allocate(budget, proportions, alphas, capacities, rng)


# The mixture of Dirichlets -----------------------------------------------------------------


def _spec_or_error(name: str, where: str) -> modalities.ModalitySpec:
  if name not in modalities.MODALITIES:
    raise UsageError(f"{where}: unknown modality {name!r}; known: {sorted(modalities.MODALITIES)}")
  return modalities.get(name)


def _check_alpha(value: Any, where: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise UsageError(f"{where} is {value!r}, expected a number >= 0")
  if not (math.isfinite(value) and value >= 0):
    raise UsageError(f"{where} is {value!r}, expected a finite number >= 0")
  return float(value)


@dataclasses.dataclass(frozen=True)
class DirichletComponent:
  """One Dirichlet of the mixture: alphas per modality for inputs and targets, and the
  `keep` scheme of each sequence modality ('random' where not given, as the reference).

  Roles win over alphas: a modality that cannot be an input gets input alpha 0 (raw
  pixels and feature maps as targets, for instance), likewise for targets.
  """
  input_alphas: Mapping[str, float]
  target_alphas: Mapping[str, float]
  keep: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if set(self.input_alphas) != set(self.target_alphas):
      raise UsageError(f"mixture component: input_alphas name {sorted(self.input_alphas)} "
                       f"but target_alphas name {sorted(self.target_alphas)}")
    inputs, targets, keep = {}, {}, {}
    for name in self.input_alphas:
      spec = _spec_or_error(name, "mixture component")
      alpha_in = _check_alpha(self.input_alphas[name], f"modality {name!r}: input alpha")
      alpha_tg = _check_alpha(self.target_alphas[name], f"modality {name!r}: target alpha")
      inputs[name] = alpha_in if spec.can_input else 0.0
      targets[name] = alpha_tg if spec.can_target else 0.0
      if spec.kind == Kind.SEQUENCE:
        keep[name] = "random"
    for name, scheme in self.keep.items():
      if name not in inputs:
        raise UsageError(f"modality {name!r}: has a keep scheme but no alphas")
      if modalities.get(name).kind != Kind.SEQUENCE:
        raise UsageError(f"modality {name!r}: keep only applies to sequence modalities")
      if scheme not in KEEP_SCHEMES:
        raise UsageError(f"modality {name!r}: keep is {scheme!r}, expected one of "
                         f"{list(KEEP_SCHEMES)}")
      keep[name] = scheme
    # Plain dicts (not read-only proxies): the transform must pickle into grain workers.
    object.__setattr__(self, "input_alphas", inputs)
    object.__setattr__(self, "target_alphas", targets)
    object.__setattr__(self, "keep", keep)

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self.input_alphas)


def _strip_resolution(key: str) -> str:
  """'tok_rgb@224' -> 'tok_rgb': the reference names carry the resolution; ours don't."""
  match = re.fullmatch(r"(.+)@\d+", key)
  return match.group(1) if match else key


@dataclasses.dataclass(frozen=True)
class AlphasMixture:
  """A mixture of `DirichletComponent`s; each sample draws one by `weights`
  (uniformly when None, as the reference without `sampling_weights`)."""
  components: tuple[DirichletComponent, ...]
  weights: tuple[float, ...] | None = None
  _cumulative: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    components = tuple(self.components)
    if not components:
      raise UsageError("an alphas mixture needs at least one component")
    names = set(components[0].names)
    for index, component in enumerate(components):
      if set(component.names) != names:
        raise UsageError(f"mixture component {index} names {sorted(component.names)}, "
                         f"component 0 names {sorted(names)}")
    if self.weights is None:
      probabilities = np.full(len(components), 1.0 / len(components))
    else:
      weights = tuple(_check_alpha(w, f"sampling_weights[{i}]")
                      for i, w in enumerate(self.weights))
      if len(weights) != len(components):
        raise UsageError(f"sampling_weights has {len(weights)} entries but the mixture has "
                         f"{len(components)} components")
      if sum(weights) <= 0:
        raise UsageError("sampling_weights are all 0")
      object.__setattr__(self, "weights", weights)
      probabilities = np.asarray(weights) / sum(weights)
    cumulative = np.cumsum(probabilities)
    cumulative[-1] = 1.0  # so that no uniform draw falls past the last component
    object.__setattr__(self, "components", components)
    object.__setattr__(self, "_cumulative", cumulative)

  @property
  def names(self) -> tuple[str, ...]:
    return self.components[0].names

  @property
  def probabilities(self) -> np.ndarray:
    return np.diff(self._cumulative, prepend=0.0)

  def sample_index(self, rng: np.random.Generator) -> int:
    # side="right" skips components of weight 0 (their cumulative value repeats).
    return int(np.searchsorted(self._cumulative, rng.random(), side="right"))

  def sample(self, rng: np.random.Generator) -> DirichletComponent:
    return self.components[self.sample_index(rng)]

  @classmethod
  def uniform(cls, names: Iterable[str], input_alpha: float = 1.0,
              target_alpha: float = 1.0, keep: str = "random") -> AlphasMixture:
    """One component, every modality the same alphas ("all to all")."""
    names = tuple(names)
    sequences = [n for n in names if _spec_or_error(n, "alphas").kind == Kind.SEQUENCE]
    return cls((DirichletComponent(dict.fromkeys(names, input_alpha),
                                   dict.fromkeys(names, target_alpha),
                                   dict.fromkeys(sequences, keep)),))

  @classmethod
  def rgb_to_all_plus_all_to_all(cls, names: Iterable[str], alpha: float = 0.5,
                                 rgb_alpha: float = 1000.0) -> AlphasMixture:
    """The reference's mix_mod7_all2all_rgb2all_a0.5: half the samples take their
    inputs from rgb pixels only (rgb2all), half from every modality (all2all)."""
    return cls.sources_to_all_plus_all_to_all(names, ("rgb",), alpha, rgb_alpha)

  @classmethod
  def sources_to_all_plus_all_to_all(cls, names: Iterable[str], sources: Sequence[str],
                                     alpha: float = 0.5,
                                     source_alpha: float = 1000.0) -> AlphasMixture:
    """One component per source modality that alone gives the inputs (the whole of it:
    a source caption is kept entire) and every other modality the targets, plus one
    all2all component, drawn equally often. ("rgb", "caption") is 4M-21's
    all2all + rgb2all + caption-to-image mixture, which teaches text-to-image sooner
    than all2all alone, where a caption is rarely a whole input."""
    names = tuple(names)
    sources = tuple(sources)
    if not sources:
      raise UsageError("a sources-to-all mixture needs at least one source modality")
    everything = dict.fromkeys(names, alpha)
    components = []
    for source in sources:
      if source not in names:
        raise UsageError(f"{source}-to-all needs the {source!r} modality among {list(names)}")
      spec = _spec_or_error(source, "alphas sources")
      if not spec.can_input:
        raise UsageError(f"{source!r} cannot be an input, so it cannot be a source")
      only_source = {name: source_alpha if name == source else 0.0 for name in names}
      others = {name: 0.0 if name == source else alpha for name in names}
      keep = {source: "all"} if spec.kind == Kind.SEQUENCE else {}
      components.append(DirichletComponent(only_source, others, keep))
    components.append(DirichletComponent(everything, everything))
    return cls(tuple(components))

  @classmethod
  def from_reference_config(cls, config: Mapping, weights: Sequence[float] | None = None,
                            names: Iterable[str] | None = None) -> AlphasMixture:
    """Reads an alphas-mixture config of the reference (a parsed YAML file of
    cfgs/default/4m/alphas_mixture/), one list entry per mixture component:

        {"sampling_weights": [1.0, 1.0],              # optional, with alphas_mixture
         "alphas_mixture": {
             "tok_rgb@224": {"input_alphas": [0.0, 0.5], "target_alphas": [0.5, 0.5]},
             "caption": {"input_alphas": [...], "target_alphas": [...],
                         "keep": ["random", "all"]}}}

    or, without weights, the per-modality mapping itself at the top level. A
    resolution suffix ("@224") is dropped from names. With `names`, only those
    modalities are read (each must be there) and the others ignored, as the reference
    does with a dataset's in/out domains.
    """
    if not isinstance(config, Mapping):
      raise UsageError(f"alphas config: expected a mapping, got {type(config).__name__}")
    file_weights = None
    per_modality = config
    if "alphas_mixture" in config:
      extra = set(config) - {"alphas_mixture", "sampling_weights"}
      if extra:
        raise UsageError(f"alphas config: unexpected top-level keys {sorted(extra)} beside "
                         "alphas_mixture (expected only sampling_weights)")
      file_weights = config.get("sampling_weights")
      per_modality = config["alphas_mixture"]
    elif "sampling_weights" in config:
      raise UsageError("alphas config: sampling_weights needs the per-modality alphas under "
                       "an alphas_mixture key")
    if file_weights is not None and weights is not None:
      raise UsageError("alphas config: mixture weights given twice (sampling_weights in the "
                       "config and the weights argument)")
    weights = file_weights if file_weights is not None else weights
    if not isinstance(per_modality, Mapping) or not per_modality:
      raise UsageError("alphas config: expected a non-empty mapping of modality -> alphas")
    wanted = None if names is None else set(names)

    entries: dict[str, tuple[str, Mapping]] = {}  # name -> (key as written, entry)
    for key, entry in per_modality.items():
      name = _strip_resolution(str(key))
      if wanted is not None and name not in wanted:
        continue
      spec = _spec_or_error(name, "alphas config")
      if name in entries:
        raise UsageError(f"alphas config: modality {name!r} appears twice "
                         f"({entries[name][0]!r} and {key!r})")
      _check_reference_entry(key, spec, entry)
      entries[name] = (key, entry)
    if not entries:
      raise UsageError("alphas config: no modality to read (names is empty)")
    if wanted is not None and wanted - set(entries):
      raise UsageError(f"alphas config: no entry for modalities {sorted(wanted - set(entries))}")

    first_key, first_entry = next(iter(entries.values()))
    num_components = len(first_entry["input_alphas"])
    for key, entry in entries.values():
      for field in ("input_alphas", "target_alphas", "keep"):
        if field in entry and len(entry[field]) != num_components:
          raise UsageError(f"alphas config: modality {key!r}: {field} has "
                           f"{len(entry[field])} entries, expected {num_components} (one per "
                           f"mixture component, as {first_key!r} input_alphas has)")
    if weights is not None:
      if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise UsageError(f"alphas config: sampling_weights must be a list, got {weights!r}")
      if len(weights) != num_components:
        raise UsageError(f"alphas config: sampling_weights has {len(weights)} entries but "
                         f"the alphas have {num_components} mixture components")

    components = []
    for index in range(num_components):
      try:
        components.append(DirichletComponent(
            {name: entry["input_alphas"][index] for name, (_, entry) in entries.items()},
            {name: entry["target_alphas"][index] for name, (_, entry) in entries.items()},
            {name: entry["keep"][index] for name, (_, entry) in entries.items()
             if "keep" in entry}))
      except UsageError as error:
        raise UsageError(f"alphas config, mixture component {index}: {error}") from None
    return cls(tuple(components), None if weights is None else tuple(weights))


def _check_reference_entry(key: str, spec: modalities.ModalitySpec, entry: Any) -> None:
  where = f"alphas config: modality {key!r}"
  if not isinstance(entry, Mapping):
    raise UsageError(f"{where}: expected a mapping with input_alphas and target_alphas, "
                     f"got {entry!r}")
  unknown = set(entry) - {"input_alphas", "target_alphas", "keep"}
  if unknown:
    raise UsageError(f"{where}: unknown fields {sorted(unknown)} (expected input_alphas, "
                     "target_alphas and, for sequences, keep)")
  for field in ("input_alphas", "target_alphas", "keep"):
    if field not in entry:
      if field == "keep":
        continue
      raise UsageError(f"{where}: {field} is missing")
    values = entry[field]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
      raise UsageError(f"{where}: {field} must be a non-empty list (one entry per mixture "
                       f"component), got {values!r}")
    if field == "keep":
      if spec.kind != Kind.SEQUENCE:
        raise UsageError(f"{where}: keep only applies to sequence modalities, {spec.name!r} "
                         f"is {spec.kind.value}")
      bad = [v for v in values if v not in KEEP_SCHEMES]
      if bad:
        raise UsageError(f"{where}: keep has {bad}, expected each of {list(KEEP_SCHEMES)}")
    else:
      for index, value in enumerate(values):
        _check_alpha(value, f"{where}: {field}[{index}]")


# Span masking ------------------------------------------------------------------------------


def input_length(keep: np.ndarray) -> np.ndarray:
  """Length of the encoder sequence for keep masks [..., n]: kept tokens + one sentinel
  per run of masked tokens."""
  masked = ~keep
  span_starts = masked[..., 0].astype(np.int64)
  span_starts = span_starts + (masked[..., 1:] & keep[..., :-1]).sum(-1)
  return keep.sum(-1) + span_starts


def choose_keep_mask(length: int, input_budget: int, scheme: str,
                     rng: np.random.Generator) -> np.ndarray:
  """Which tokens of a sequence the encoder sees, as the reference picks them: each kept
  with keep_prob; while the input is over budget, keep_prob *= 0.9 and redraw."""
  if input_budget <= 0:  # the reference: no input at all, the whole text is the target
    return np.zeros(length, bool)
  if scheme == "random":
    keep_prob = rng.random()
  elif scheme == "all":
    keep_prob = 1.0
  elif scheme == "binary":
    keep_prob = float(rng.integers(2))
  else:
    raise UsageError(f"keep is {scheme!r}, expected one of {list(KEEP_SCHEMES)}")
  rows = 1  # usually the first draw fits; the rest are tried 16 at a time
  while keep_prob > 1e-30:
    # Drawing the next tries in one go is the same as drawing them one after another:
    # every try uses fresh uniforms, and the first that fits wins.
    keep_probs = keep_prob * KEEP_PROB_DECAY ** np.arange(rows)
    keep = rng.random((rows, length)) < keep_probs[:, None]
    fits = np.flatnonzero(input_length(keep) <= input_budget)
    if fits.size:
      return keep[fits[0]]
    keep_prob *= KEEP_PROB_DECAY ** rows
    rows = 16
  return np.zeros(length, bool)  # everything in one span: one sentinel, fits any budget >= 1


def span_mask(ids: np.ndarray, keep: np.ndarray,
              text_ids: TextSpecialIds = TextSpecialIds()) -> tuple[np.ndarray, np.ndarray]:
  """T5-style span masking: (encoder sequence, decoder sequence).

  Masked runs become spans numbered from [S_1]. The encoder sequence is the kept tokens
  with each span's sentinel in its place; the decoder sequence is every span after its
  sentinel, closed by the next sentinel: [S_1] span_1 ... [S_k] span_k [S_k+1].
  """
  ids = np.asarray(ids, np.int32)
  masked = ~keep
  starts = masked.copy()
  starts[1:] &= keep[:-1]
  span_number = np.cumsum(starts)
  sentinels = (text_ids.first_sentinel + FIRST_SPAN - 1 + span_number).astype(np.int32)
  inputs = np.where(keep, ids, sentinels)[keep | starts]

  num_spans = int(span_number[-1]) if len(ids) else 0
  # Every masked token writes itself, a span's first token its sentinel before it.
  ends = np.cumsum(masked.astype(np.int64) + starts)
  target = np.empty(int(masked.sum()) + num_spans + 1, np.int32)
  target[ends[masked] - 1] = ids[masked]
  target[ends[starts] - 2] = sentinels[starts]
  target[-1] = text_ids.sentinel(FIRST_SPAN + num_spans)
  return inputs, target


def truncate_target(target: np.ndarray, num_predictions: int, rng: np.random.Generator,
                    text_ids: TextSpecialIds = TextSpecialIds()) -> np.ndarray:
  """Cuts a decoder sequence to at most `num_predictions` predictions (its length - 1)
  as the reference does: a window from a random sentinel (not the closing one), or, when
  that window would run off the end, the longest suffix from a sentinel that fits."""
  if num_predictions <= 0:
    return target[:0]
  if len(target) - 1 <= num_predictions:
    return target
  window = num_predictions + 1
  starts = np.flatnonzero(text_ids.is_sentinel(target))
  start = starts[rng.integers(max(1, len(starts) - 1))]
  if len(target) - start >= window:
    return target[start:start + window]
  return target[starts[len(target) - starts <= window][0]:]


# The per-sample transform --------------------------------------------------------------------


class MaskSample:
  """The 4M masking of one sample: `masked = MaskSample(...)(sample, rng)`.

  `sample` is a record after augmentation: token ids int [G, G] or [N] under the name of
  IMAGE_TOKENS / GLOBAL modalities; uint8 [R, R, 3] under "rgb" for PIXELS; float32
  [G, G, D] under the raw source's name for FEATURE_MAPs; for SEQUENCEs either int token
  ids (the text's own, without [EOS]; trailing PADs are dropped) or a raw value (a
  caption str, a boxes dict) that `sequence_encoders[name]` turns into such ids.
  A modality the sample lacks gets empty masks, and the budgets go to the others.

  The result has one entry per name in the contract format (module docstring) plus the
  sample's "meta" if it has one; other fields are dropped. The same sample and rng state
  give the same result.
  """

  def __init__(self, names: Iterable[str], layout: modalities.Layout, input_budget: int,
               target_budget: int, mixture: AlphasMixture, *,
               text_ids: TextSpecialIds = TextSpecialIds(),
               sequence_encoders: Mapping[str, Callable[[Any], np.ndarray]] | None = None,
               pixel_normalization: str = "imagenet"):
    self.names = tuple(names)
    if not self.names or len(set(self.names)) != len(self.names):
      raise UsageError(f"masking needs distinct modality names, got {list(self.names)}")
    self.specs = tuple(_spec_or_error(name, "masking") for name in self.names)
    for budget, what in ((input_budget, "input"), (target_budget, "target")):
      if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise UsageError(f"{what} budget must be an int >= 0, got {budget!r}")
    self.layout, self.text_ids = layout, text_ids
    self.input_budget, self.target_budget = int(input_budget), int(target_budget)
    self.mixture = mixture
    self.sequence_encoders = dict(sequence_encoders or {})
    if pixel_normalization not in PIXEL_STATS:
      raise UsageError(f"pixel_normalization is {pixel_normalization!r}, expected one of "
                       f"{list(PIXEL_STATS)}")
    self.pixel_normalization = pixel_normalization
    mean, std = (np.asarray(v, np.float32) for v in PIXEL_STATS[pixel_normalization])
    # (x / 255 - mean) / std as one multiply-add.
    self._pixel_scale, self._pixel_shift = 1.0 / (255.0 * std), -mean / std

    self.num_tokens = np.array([spec.num_tokens(layout) for spec in self.specs], np.int64)
    self._is_sequence = np.array([spec.kind == Kind.SEQUENCE for spec in self.specs])
    self._sequences = tuple(np.flatnonzero(self._is_sequence))
    self._can_target = np.array([spec.can_target for spec in self.specs])
    self._check_specs()
    self._check_encoders()
    self._input_alphas, self._target_alphas, self._keep = self._component_tables()
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
    present = np.array([value is not None for value in values])
    dense_eligible = present & ~self._is_sequence

    # Inputs: the Dirichlet split, then span masking, whose unused tokens go to the
    # dense modalities (a sequence never needs more than its text's length).
    capacity_in = np.where(present, self.num_tokens, 0)
    for i in self._sequences:
      if present[i]:
        capacity_in[i] = len(values[i])
    proportions_in = draw_proportions(alpha_in, rng)
    n_in = allocate(self.input_budget, proportions_in, alpha_in, capacity_in, rng)
    spans = {}
    for i in self._sequences:
      if present[i]:
        keep = choose_keep_mask(len(values[i]), int(n_in[i]), keep_schemes[i], rng)
        inputs, target = span_mask(values[i], keep, self.text_ids)
        if n_in[i] == 0:
          inputs = inputs[:0]
        spans[i] = (inputs, target)
        n_in[i] = len(inputs)
    if spans:
      n_in = redistribute(n_in, self.input_budget - int(n_in.sum()), proportions_in,
                          capacity_in, dense_eligible & (alpha_in > 0), rng)

    # Targets: dense ones from the positions the inputs left, sequences up to their
    # full decoder sequence, cut to what they get.
    capacity_tg = np.where(present & self._can_target, self.num_tokens - n_in, 0)
    for i, (_, target) in spans.items():
      capacity_tg[i] = len(target) - 1 if self._can_target[i] else 0
    proportions_tg = draw_proportions(alpha_tg, rng)
    n_tg = allocate(self.target_budget, proportions_tg, alpha_tg, capacity_tg, rng)
    for i, (inputs, target) in spans.items():
      target = truncate_target(target, int(n_tg[i]), rng, self.text_ids)
      spans[i] = (inputs, target)
      n_tg[i] = max(len(target) - 1, 0)
    if spans:
      n_tg = redistribute(n_tg, self.target_budget - int(n_tg.sum()), proportions_tg,
                          capacity_tg, dense_eligible & (alpha_tg > 0), rng)

    masked = {}
    for i, spec in enumerate(self.specs):
      if spec.kind == Kind.SEQUENCE:
        masked[spec.name] = self._sequence_entry(spec, spans.get(i))
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
      return np.zeros((self.layout.resolution, self.layout.resolution, 3), np.float32)
    if spec.kind == Kind.FEATURE_MAP:
      return np.zeros((n, spec.source.channels), np.float32)
    return np.zeros(n, np.int32)

  def _sequence_entry(self, spec: modalities.ModalitySpec,
                      span: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
    length, pad = spec.max_length, self.text_ids.pad
    entry = {"input_mask": np.zeros(length, bool), "target_mask": np.zeros(length, bool),
             "input_tokens": np.full(length, pad, np.int32),
             "target_tokens": np.full(length, pad, np.int32),
             "target_labels": np.full(length, pad, np.int32)}
    if span is not None:
      inputs, target = span
      entry["input_tokens"][:len(inputs)] = inputs
      entry["input_mask"][:len(inputs)] = True
      predictions = max(len(target) - 1, 0)
      entry["target_tokens"][:predictions] = target[:-1]
      entry["target_labels"][:predictions] = target[1:]
      entry["target_mask"][:predictions] = True
    return entry

  # Reading the sample ----------------------------------------------------------------------

  def _read(self, spec: modalities.ModalitySpec, sample: Mapping[str, Any]):
    """The modality's content ready to mask, or None when the sample lacks it."""
    key = spec.source.name if spec.kind in (Kind.PIXELS, Kind.FEATURE_MAP) else spec.name
    value = sample.get(key)
    if value is None:
      return None
    if spec.kind == Kind.PIXELS:
      return self._read_pixels(key, value)
    if spec.kind == Kind.FEATURE_MAP:
      return self._read_features(spec, key, value)
    if spec.kind == Kind.SEQUENCE:
      return self._read_sequence(spec, value)
    return self._read_token_grid(spec, value)

  def _read_pixels(self, key: str, value: Any) -> np.ndarray:
    size = self.layout.resolution
    if not isinstance(value, np.ndarray) or value.shape != (size, size, 3):
      raise RecordError(f"expected a uint8 image [{size}, {size}, 3], got "
                        f"{_describe(value)}", field=key)
    if value.dtype != np.uint8:
      raise RecordError(f"expected uint8 pixels, got {value.dtype}", field=key)
    return value * self._pixel_scale + self._pixel_shift

  def _read_features(self, spec: modalities.ModalitySpec, key: str, value: Any) -> np.ndarray:
    grid, channels = self.layout.grid, spec.source.channels
    if not isinstance(value, np.ndarray) or value.shape != (grid, grid, channels):
      raise RecordError(f"expected a feature map [{grid}, {grid}, {channels}], got "
                        f"{_describe(value)}", field=key)
    if value.dtype.kind != "f":
      raise RecordError(f"expected float features, got {value.dtype}", field=key)
    return value.reshape(grid * grid, channels).astype(np.float32, copy=False)

  def _read_token_grid(self, spec: modalities.ModalitySpec, value: Any) -> np.ndarray:
    n = spec.num_tokens(self.layout)
    shapes = [(n,)] + ([spec.grid_shape(self.layout)] if spec.grid_shape(self.layout) else [])
    if not isinstance(value, np.ndarray) or value.shape not in shapes:
      raise RecordError(f"expected token ids of shape {' or '.join(map(str, shapes))}, got "
                        f"{_describe(value)}", field=spec.name)
    return self._checked_ids(spec, value.reshape(n))

  def _read_sequence(self, spec: modalities.ModalitySpec, value: Any) -> np.ndarray:
    if isinstance(value, (np.ndarray, list, tuple)):
      ids = np.asarray(value)
      if ids.size == 0:
        ids = ids.astype(np.int32)
    else:  # raw text or boxes: the encoder makes the ids
      encoder = self.sequence_encoders.get(spec.name)
      if encoder is None:
        raise UsageError(f"{spec.name!r} holds a raw {type(value).__name__}; give "
                         f"MaskSample a sequence_encoders[{spec.name!r}] to tokenize it")
      ids = np.asarray(encoder(value))
    if ids.ndim != 1:
      raise RecordError(f"expected a 1-D sequence of token ids, got {_describe(ids)}",
                        field=spec.name)
    ids = self._checked_ids(spec, ids)
    ids = ids[:len(ids) - _trailing_count(ids, self.text_ids.pad)]
    if (ids == self.text_ids.pad).any() or self.text_ids.is_sentinel(ids).any():
      raise RecordError("the text's token ids contain [PAD] or sentinel ids, which the "
                        "span masking reserves", field=spec.name)
    ids = np.append(ids, np.int32(self.text_ids.eos))
    limit = spec.max_length - 1
    if len(ids) > limit:
      if spec.name not in self._warned_truncation:
        self._warned_truncation.add(spec.name)
        warnings.warn(f"{spec.name!r}: texts longer than {limit} tokens (with [EOS]) are "
                      f"truncated to fit max_length {spec.max_length}", stacklevel=3)
      ids = ids[:limit]
    return ids

  def _checked_ids(self, spec: modalities.ModalitySpec, ids: np.ndarray) -> np.ndarray:
    if ids.dtype.kind not in "iu":
      raise RecordError(f"expected integer token ids, got {ids.dtype}", field=spec.name)
    if ids.size and (ids.min() < 0 or ids.max() >= spec.vocab_size):
      bad = ids[(ids < 0) | (ids >= spec.vocab_size)]
      raise RecordError(f"token id {int(bad[0])} outside the vocabulary [0, "
                        f"{spec.vocab_size})", field=spec.name)
    return ids.astype(np.int32, copy=False)


def _trailing_count(ids: np.ndarray, value: int) -> int:
  """How many entries at the end of `ids` equal `value`."""
  differs = np.flatnonzero(ids != value)
  return len(ids) - (differs[-1] + 1 if differs.size else 0)


def _describe(value: Any) -> str:
  if isinstance(value, np.ndarray):
    return f"{value.dtype} {list(value.shape)}"
  return type(value).__name__
