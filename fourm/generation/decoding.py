"""`Decoding`: the settings of one generated target, one link of a chain.

It says how the target is decoded (method, steps, token and temperature schedules,
filtering, guidance, which known modalities it may see); the sampler reads it, and
chains are lists of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from fourm import modalities
from fourm.errors import UsageError
from fourm.generation import guidance as guidance_lib

Kind = modalities.Kind
METHODS = ("maskgit", "roar", "autoregressive")
# How a sequence target given with gaps ([S_1], ...) is filled: "span" as 4M trains (the
# text with its gaps to the encoder, the decoder writes "[S_1] span [S_2] ..."); "cm3"
# as CM3's causal-masked objective trains (config.cm3): the decoder reads the whole
# text with its gaps, then writes each span after its sentinel, ending it with [EOS].
INFILL_MODES = ("span", "cm3")


@dataclasses.dataclass(frozen=True)
class Decoding:
  """How one target is generated: one link of a chain.

  method: "maskgit" (most confident first) or "roar" (random order) for token grids,
    "autoregressive" for sequences; None picks by kind.
  num_steps, token_schedule: dense decoding steps; "cosine", "linear", the reference
    implementation's "reference_cosine" / "reference_linear", or an explicit list of
    tokens per step (adding up to the tokens to generate).
  temperature -> temperature_end over the steps (or over the tokens of a sequence),
    along temperature_schedule ("constant", "linear", "cosine", or the reference's
    "reference_linear" / "reference_decreasing" / "reference_onex"); 0 is greedy.
  top_k, top_p: filtering before sampling (0 = off).
  guidance: classifier-free / multi-condition guidance, contrastive top-K.
  conditions: the known modalities the target may see (None: all of them).
  max_new_tokens: sequences stop after this many tokens at the latest.
  infill: how the gaps of a given sequence are filled, "span" or "cm3" (INFILL_MODES);
    "cm3" needs a model trained with config.cm3 on that modality.
  """
  target: str
  method: str | None = None
  num_steps: int = 8
  token_schedule: str | tuple[int, ...] = "cosine"
  temperature: float = 1.0
  temperature_end: float | None = None
  temperature_schedule: str = "constant"
  top_k: int = 0
  top_p: float = 0.0
  guidance: guidance_lib.Guidance = guidance_lib.Guidance()
  conditions: tuple[str, ...] | None = None
  max_new_tokens: int | None = None
  infill: str = "span"

  def __post_init__(self):
    if self.infill not in INFILL_MODES:
      raise UsageError(f"{self.target}: infill is {self.infill!r}, expected one of "
                       f"{INFILL_MODES}")
    if not isinstance(self.token_schedule, str):
      object.__setattr__(self, "token_schedule", tuple(int(n) for n in self.token_schedule))
    if self.conditions is not None:
      object.__setattr__(self, "conditions", tuple(self.conditions))
    if isinstance(self.guidance, Mapping):
      object.__setattr__(self, "guidance", guidance_lib.Guidance(**self.guidance))

  def resolved_method(self) -> str:
    spec = modalities.get(self.target)
    default = "autoregressive" if spec.kind == Kind.SEQUENCE else "maskgit"
    method = self.method or default
    if method not in METHODS:
      raise UsageError(f"{self.target}: decoding method {method!r}, expected one of {METHODS}")
    if (method == "autoregressive") != (spec.kind == Kind.SEQUENCE):
      raise UsageError(f"{self.target} is a {spec.kind.value} modality: decode it with "
                       f"{default!r}, not {method!r}")
    return method
