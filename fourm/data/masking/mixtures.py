"""The mixture of Dirichlets that input and target budgets are drawn from, and the
reader of the reference's alphas YAML files."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fourm import modalities
from fourm.data.masking.spans import KEEP_SCHEMES
from fourm.errors import UsageError

Kind = modalities.Kind


def spec_or_error(name: str, where: str) -> modalities.ModalitySpec:
  if not modalities.is_known(name):
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
      spec = spec_or_error(name, "mixture component")
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
    sequences = [n for n in names if spec_or_error(n, "alphas").kind == Kind.SEQUENCE]
    return cls((DirichletComponent(dict.fromkeys(names, input_alpha),
                                   dict.fromkeys(names, target_alpha),
                                   dict.fromkeys(sequences, keep)),))

  @classmethod
  def rgb_to_all_plus_all_to_all(cls, names: Iterable[str], alpha: float = 0.5,
                                 rgb_alpha: float = 1000.0,
                                 companions: Sequence[str] = ()) -> AlphasMixture:
    """The reference's mix_mod7_all2all_rgb2all_a0.5: half the samples take their
    inputs from rgb pixels only (rgb2all), half from every modality (all2all)."""
    return cls.sources_to_all_plus_all_to_all(names, (modalities.RGB.name,), alpha, rgb_alpha,
                                              companions=companions)

  @classmethod
  def sources_to_all_plus_all_to_all(cls, names: Iterable[str], sources: Sequence[str],
                                     alpha: float = 0.5,
                                     source_alpha: float = 1000.0,
                                     weights: Sequence[float] | None = None,
                                     companions: Sequence[str] = ()) -> AlphasMixture:
    """One component per source modality that alone gives the inputs (the whole of it:
    a source caption is kept entire) and every other modality the targets, plus one
    all2all component, drawn equally often. ("rgb", "caption") is 4M-21's
    all2all + rgb2all + caption-to-image mixture, which teaches text-to-image sooner
    than all2all alone, where a caption is rarely a whole input. `weights` (one per
    source, then all2all's) say how often each component is drawn; equally when None.
    `companions`: input modalities shown beside every source, sharing its inputs (a
    sample's retrieved documents, which accompany its query)."""
    names = tuple(names)
    sources = tuple(sources)
    if not sources:
      raise UsageError("a sources-to-all mixture needs at least one source modality")
    unknown = set(companions) - set(names)
    if unknown:
      raise UsageError(f"companions {sorted(unknown)} are not among {list(names)}")
    everything = dict.fromkeys(names, alpha)
    components = []
    for source in sources:
      if source not in names:
        raise UsageError(f"{source}-to-all needs the {source!r} modality among {list(names)}")
      spec = spec_or_error(source, "alphas sources")
      if not spec.can_input:
        raise UsageError(f"{source!r} cannot be an input, so it cannot be a source")
      given = {source, *companions}
      only_source = {name: source_alpha if name in given else 0.0 for name in names}
      others = {name: 0.0 if name in given else alpha for name in names}
      keep = {source: "all"} if spec.kind == Kind.SEQUENCE else {}
      components.append(DirichletComponent(only_source, others, keep))
    components.append(DirichletComponent(everything, everything))
    return cls(tuple(components), tuple(weights) if weights else None)

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
      # A model that reads a modality at two sizes names the second "tok_rgb@448".
      name = str(key) if wanted is not None and str(key) in wanted else \
          _strip_resolution(str(key))
      if wanted is not None and name not in wanted:
        continue
      spec = spec_or_error(name, "alphas config")
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
