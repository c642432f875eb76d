"""`fourm.nn.init.initialize`: a module's parameters from one compiled program, the same
draws as building it eagerly, and LLVM -O0 only where a CPU initialization is all
compile (small models)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fourm.nn import init as init_lib


class Small(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(3, 5, (3, 3), rngs=rngs)
    self.dense = nnx.Linear(5, 7, kernel_init=nnx.initializers.truncated_normal(0.02),
                            rngs=rngs)
    self.table = nnx.Embed(11, 7, rngs=rngs)
    self.calls = nnx.Variable(jnp.zeros((), jnp.int32))  # a non-parameter state too

  def __call__(self, x):
    return self.dense(self.conv(x).mean((1, 2))) + self.table.embedding[0]


def test_initialize_draws_what_eager_construction_draws():
  eager = Small(nnx.Rngs(3))
  jitted = init_lib.initialize(Small, 3)
  assert type(jitted) is Small
  eager_leaves = jax.tree.leaves(nnx.state(eager))
  jitted_leaves = jax.tree.leaves(nnx.state(jitted))
  assert len(eager_leaves) == len(jitted_leaves)
  for a, b in zip(eager_leaves, jitted_leaves):
    assert a.shape == b.shape and a.dtype == b.dtype
    # One fused program instead of one per initializer: float rounding may differ.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  # A different seed draws different parameters: the values come from the seed, given
  # as an int, a numpy int or a key.
  other = init_lib.initialize(Small, 4)
  assert not np.allclose(other.dense.kernel[...], jitted.dense.kernel[...])
  for seed in (np.int64(4), jax.random.key(4)):
    np.testing.assert_array_equal(init_lib.initialize(Small, seed).dense.kernel[...],
                                  other.dense.kernel[...])
  x = np.ones((2, 8, 8, 3), np.float32)
  np.testing.assert_allclose(jitted(x), eager(x), rtol=1e-5, atol=1e-6)


def test_small_models_compile_their_initializer_fast_on_cpu_only(monkeypatch):
  abstract = nnx.eval_shape(lambda: Small(nnx.Rngs(0)))
  assert init_lib.num_params(abstract) == (3 * 3 * 3 * 5 + 5) + (5 * 7 + 7) + 11 * 7
  assert init_lib.init_compiler_options(abstract) == init_lib.CPU_FAST_COMPILE_OPTIONS
  monkeypatch.setattr(init_lib, "CPU_FAST_INIT_MAX_PARAMS", 100)
  assert init_lib.init_compiler_options(abstract) is None
  monkeypatch.setattr(init_lib, "CPU_FAST_INIT_MAX_PARAMS", 10_000)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert init_lib.init_compiler_options(abstract) is None
