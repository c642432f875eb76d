"""Chained generation: targets generated one after another, each one a condition for the
ones after it (caption -> tok_clip -> tok_rgb, or rgb -> everything).

A chain is a tuple of `Decoding`s. Write it in Python, or in a schedule file: an
ml_collections `.py` file whose `get_config()` has a `steps` list of dicts with
`Decoding`'s fields, e.g. (configs/generation/caption_to_all.py):

    config.steps = [
        dict(target="tok_clip", num_steps=8, guidance=dict(scale=3.0)),
        dict(target="tok_rgb", method="roar", num_steps=25, temperature=3.0,
             temperature_end=0.5, temperature_schedule="linear"),
    ]

`default_chain(targets)` gives every target the defaults: MaskGIT with 8 cosine steps
for token grids, left-to-right decoding for sequences; with `reference=True` (converted
reference checkpoints) the grids' steps follow the reference's own cosine schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax

from fourm import modalities
from fourm.errors import UsageError
from fourm.generation.sampler import Decoding, Sampler, check_fillable

_FIELDS = {field.name for field in dataclasses.fields(Decoding)}


def decoding_from_dict(step: Mapping[str, Any], where: str = "schedule") -> Decoding:
  step = {key: (dict(value) if hasattr(value, "items") else value)
          for key, value in dict(step).items()}
  unknown = sorted(set(step) - _FIELDS)
  if unknown:
    raise UsageError(f"{where}: unknown field(s) {unknown}; a step has {sorted(_FIELDS)}")
  if "target" not in step:
    raise UsageError(f"{where}: every step needs a target")
  if not modalities.is_known(step["target"]):
    raise UsageError(f"{where}: unknown modality {step['target']!r}; known: "
                     f"{sorted(modalities.MODALITIES)}")
  for key in ("token_schedule", "conditions"):
    if isinstance(step.get(key), list):
      step[key] = tuple(step[key])
  try:
    decoding = Decoding(**step)
    decoding.resolved_method()
  except TypeError as error:
    raise UsageError(f"{where}: {error}") from None
  return decoding


def load_chain(path: str) -> tuple[Decoding, ...]:
  """The chain in a schedule file (`path[:arg]`, like training configs)."""
  from fourm.config import load_config
  config = load_config(path)
  if "steps" not in config:
    raise UsageError(f"--schedule {path}: get_config() must set `steps`, a list of dicts")
  return tuple(decoding_from_dict(step, f"--schedule {path}, step {i}")
               for i, step in enumerate(config.steps))


def default_chain(targets: Iterable[str], reference: bool = False) -> tuple[Decoding, ...]:
  chain = []
  for name in targets:
    step = {"target": name}
    if reference and modalities.is_known(name) and \
        modalities.get(name).kind != modalities.Kind.SEQUENCE:
      step["token_schedule"] = "reference_cosine"
    chain.append(decoding_from_dict(step, f"target {name}"))
  return tuple(chain)


def _check_before_running(sampler: Sampler, known: Mapping[str, dict],
                          chain: Sequence[Decoding]) -> None:
  """What would fail mid-chain fails first: a sequence target given as complete text, or
  generated twice (the second time it is complete)."""
  seen: set[str] = set()
  for decoding in chain:
    if modalities.get(decoding.target).kind == modalities.Kind.SEQUENCE:
      if decoding.target in seen:
        raise UsageError(f"{decoding.target}: generated twice in the chain; after the first "
                         "time it is complete and cannot be filled in again")
      if decoding.target in known:
        check_fillable(decoding.target, known[decoding.target], sampler.text_ids)
    seen.add(decoding.target)


def run_chain(sampler: Sampler, known: Mapping[str, dict], chain: Sequence[Decoding],
              key: jax.Array, negatives: Mapping[str, dict] | None = None,
              progress: Callable[[int, Decoding], None] | None = None) -> dict[str, dict]:
  """Generates the chain's targets in order; returns every known modality's entry."""
  if not chain:
    raise UsageError("the chain has no steps: name at least one target")
  _check_before_running(sampler, known, chain)
  known = dict(known)
  for index, decoding in enumerate(chain):
    if progress is not None:
      progress(index, decoding)
    known = sampler.generate(known, decoding, jax.random.fold_in(key, index), negatives)
  return known
