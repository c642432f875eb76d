"""Building a module's parameters in one compiled program.

Constructed eagerly, an NNX module runs each initializer as a jax call of its own, and
each distinct parameter shape compiles a program of its own (the threefry draw and the
distribution's transform): a small DiVAE spent ~18 s of a 2-core CPU compiling its
initializers one by one. `initialize` traces the constructor once and compiles the whole
initialization as one program (3-4 s for that DiVAE), with the same random streams
(values equal up to float rounding: one fused program instead of many).

On CPU a small model's initialization is all compile and no run, so below
`CPU_FAST_INIT_MAX_PARAMS` it compiles at LLVM -O0, which runs the draws slower but
compiles them several times faster (that DiVAE: 16 s -> 4 s). Larger models keep the
default level: a 67M-parameter 4M-T runs its -O0 initializer 5x slower (3.9 s against
0.8 s) and saves no compile time. Other backends always compile as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
from flax import nnx

Module = TypeVar("Module", bound=nnx.Module)

CPU_FAST_INIT_MAX_PARAMS = 10_000_000
CPU_FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0}


def num_params(abstract: nnx.Module) -> int:
  """The parameter count of a module (abstract ones from `nnx.eval_shape` too)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def init_compiler_options(abstract: nnx.Module) -> dict | None:
  """The compiler options `initialize` uses for a module of this size on this backend."""
  if jax.default_backend() == "cpu" and num_params(abstract) <= CPU_FAST_INIT_MAX_PARAMS:
    return CPU_FAST_COMPILE_OPTIONS
  return None


def initialize(build: Callable[[nnx.Rngs], Module], seed: int | jax.Array = 0) -> Module:
  """`build(nnx.Rngs(seed))`, its arrays made by one jitted program rather than one per
  initializer. The seed (an int, or a key of any implementation) is the program's
  argument, not a constant in it, so models that differ only in their seed share one
  compiled program. `build` is traced twice, once for shapes and once for the program."""
  is_key = isinstance(seed, jax.Array) and jax.dtypes.issubdtype(seed.dtype,
                                                                  jax.dtypes.prng_key)
  key = seed if is_key else jax.random.key(seed)
  abstract = nnx.eval_shape(lambda: build(nnx.Rngs(key)))
  make = jax.jit(lambda key: nnx.state(build(nnx.Rngs(key))),
                 compiler_options=init_compiler_options(abstract))
  return nnx.merge(nnx.graphdef(abstract), make(key))
