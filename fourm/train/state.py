"""The train state, and building the model and its state on a mesh."""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from fourm import modalities
from fourm.errors import UsageError
from fourm.models import fourm as fourm_model
from fourm.nn import sharding
from fourm.nn.init import init_compiler_options

LAYOUTS = {"small": modalities.SMALL_LAYOUT, "reference": modalities.REFERENCE_LAYOUT}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
  step: jax.Array              # int32: steps taken = batches consumed (skipped ones too)
  params: nnx.State            # the model's nnx.Param leaves
  opt_state: optax.OptState
  nonfinite_streak: jax.Array  # int32: consecutive steps whose loss or gradient was not finite
  nonfinite_total: jax.Array   # int32: such steps over the whole run (their updates skipped)


def layout(config: ml_collections.ConfigDict) -> modalities.Layout:
  """config.layout: a named layout or "RESOLUTION/PATCH" (e.g. "448/16", the reference's
  super-resolution models)."""
  name = config.layout
  if name in LAYOUTS:
    return LAYOUTS[name]
  resolution, _, patch = str(name).partition("/")
  if resolution.isdigit() and patch.isdigit() and int(patch) > 0:
    try:
      return modalities.Layout(int(resolution), int(patch))
    except ValueError as error:
      raise UsageError(f"config.layout {name!r}: {error}") from None
  raise UsageError(f"config.layout is {name!r}, expected one of {sorted(LAYOUTS)} or "
                   "RESOLUTION/PATCH such as '448/16'")


def vocab_sizes(config: ml_collections.ConfigDict) -> dict[str, int]:
  """The run's own vocabularies (config.model.vocab_sizes) of the modalities it uses: what
  the model's tables, the masking's id checks and the tokenizer checks all follow. A
  config without them (older workdirs, tokenizer-only jobs) has the registry's. Entries
  for modalities the run leaves out are ignored (a run may drop modalities by an override
  of config.modalities alone); unknown names are errors (typos)."""
  sizes = dict((config.get("model") or {}).get("vocab_sizes", {}) or {})
  for name, size in sizes.items():
    if not modalities.is_known(name):
      raise UsageError(f"config.model.vocab_sizes names {name!r}, not a known modality")
    try:
      modalities.get(name, {name: size})
    except ValueError as error:
      raise UsageError(f"config.model.vocab_sizes: {error}") from None
  return {name: size for name, size in sizes.items() if name in config.modalities}


ATTENTION_IMPLS = ("", "xla", "cudnn")


def attention_impl(name: str) -> str | None:
  """config.model.attention -> jax.nn.dot_product_attention's `implementation`."""
  if name not in ATTENTION_IMPLS:
    raise UsageError(f"config.model.attention is {name!r}, expected one of "
                     f"{list(ATTENTION_IMPLS)} ('' = XLA's choice)")
  return name or None


def model_config(config: ml_collections.ConfigDict) -> fourm_model.FourMConfig:
  model = config.model
  if model.size not in fourm_model.PRESETS:
    raise UsageError(f"config.model.size is {model.size!r}, expected one of "
                     f"{sorted(fourm_model.PRESETS)}")
  for field in ("dtype", "param_dtype"):
    if model[field] not in DTYPES:
      raise UsageError(f"config.model.{field} is {model[field]!r}, expected one of "
                       f"{sorted(DTYPES)}")
  overrides = {key: model[key] for key in ("dim", "encoder_depth", "decoder_depth",
                                           "num_heads") if model.get(key)}
  # Older workdirs' configs predate these three fields: their models tie and share and
  # have the registry's vocabularies.
  return fourm_model.PRESETS[model.size](
      vocab_sizes=tuple(sorted(vocab_sizes(config).items())),
      dtype=DTYPES[model.dtype], param_dtype=DTYPES[model.param_dtype], remat=model.remat,
      scan_layers=model.get("scan_layers", False),
      attention_impl=attention_impl(model.get("attention", "")),
      tie_output_heads=model.get("tie_output_heads", True),
      share_modality_embeddings=model.get("share_modality_embeddings", True), **overrides)


def model_factory(config: ml_collections.ConfigDict) -> Callable[[], fourm_model.FourM]:
  """A function that builds the run's model (call it under the mesh to shard it)."""
  for name in config.modalities:
    if not modalities.is_known(name):
      raise UsageError(f"config.modalities names {name!r}; known: {sorted(modalities.MODALITIES)}")
  architecture = model_config(config)
  grid_layout = layout(config)

  def build() -> fourm_model.FourM:
    return fourm_model.FourM(architecture, tuple(config.modalities), grid_layout,
                             config.input_budget, config.target_budget,
                             input_only=tuple(config.get("input_only", ())),
                             rngs=nnx.Rngs(config.seed))
  return build


def create_train_state(build: Callable[[], fourm_model.FourM],
                       tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                       rules: sharding.Rules = sharding.DEFAULT_RULES
                       ) -> tuple[nnx.GraphDef, TrainState]:
  """A fresh state, parameters born sharded by the logical-axis table `rules`."""
  abstract = nnx.eval_shape(build)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    state = jax.jit(_initializer(build, tx),
                    compiler_options=init_compiler_options(abstract))()
  return nnx.graphdef(abstract), state


def abstract_train_state(build: Callable[[], fourm_model.FourM],
                         tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                         rules: sharding.Rules = sharding.DEFAULT_RULES
                         ) -> tuple[nnx.GraphDef, TrainState]:
  """`create_train_state`'s result as shapes, dtypes and shardings only, nothing
  allocated: what an ahead-of-time compile of the train step needs for a model too large
  for this host (benchmarks/memory_plan.py). The shardings are the ones the real state is
  born with, read from the compiled initializer."""
  abstract = nnx.eval_shape(build)
  graphdef = nnx.graphdef(abstract)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    lowered = jax.jit(_initializer(build, tx),
                      compiler_options=init_compiler_options(abstract)).lower()
    shardings = lowered.compile().output_shardings
  state = jax.tree.map(lambda shape, where: jax.ShapeDtypeStruct(shape.shape, shape.dtype,
                                                                 sharding=where),
                       lowered.out_info, shardings)
  return graphdef, state


def _initializer(build: Callable[[], fourm_model.FourM],
                 tx: optax.GradientTransformation) -> Callable[[], TrainState]:
  def init() -> TrainState:
    params = nnx.state(build(), nnx.Param)
    zero = jnp.zeros((), jnp.int32)
    # Adam's moments split as their parameters do: FSDP's memory saving is mostly theirs.
    opt_state = sharding.constrain_variables(tx.init(params))
    return TrainState(step=zero, params=params, opt_state=opt_state,
                      nonfinite_streak=zero, nonfinite_total=zero)
  return init


def num_params(state: TrainState) -> int:
  return sum(x.size for x in jax.tree.leaves(state.params))
