"""The vector quantizer: lookup, straight-through gradients, EMA update, dead-code replacement."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tokenizers_vq import quantizer as q


def rngs(seed: int = 0) -> nnx.Rngs:
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))  # compiles faster than threefry on CPU


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _unit(x):
  x = np.asarray(x, np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_lookup_is_cosine_nearest_and_codes_are_not_optimizer_params():
  vq = q.VectorQuantizer(16, 4, rngs=rngs(0))
  z = _normal(1, (3, 5, 4)) * 7.0  # scale must not matter
  out = nnx.jit(lambda vq, z: vq(z))(vq, z)
  codebook = np.asarray(vq.codebook[...])
  expected = np.argmax(_unit(np.asarray(z)) @ codebook.T, axis=-1)
  np.testing.assert_array_equal(np.asarray(out.codes), expected)
  assert out.codes.dtype == jnp.int32 and out.codes.shape == (3, 5)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(out.latents), axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out.quantized), codebook[expected], atol=1e-6)
  np.testing.assert_allclose(np.asarray(vq.lookup(out.codes)), codebook[expected])
  # The codebook and its statistics are invisible to an optimizer over nnx.Param.
  assert not jax.tree.leaves(nnx.state(vq, nnx.Param))
  assert set(nnx.state(vq, q.CodebookState)) == {"codebook", "cluster_size", "embed_avg"}


def test_straight_through_gradient_is_the_gradient_of_the_unquantized_path():
  vq = q.VectorQuantizer(8, 4, commitment_weight=0.0, rngs=rngs(0))
  z = _normal(2, (6, 4))
  w = _normal(3, (6, 4))
  through_codes, identity = jax.jit(lambda z: (
      jax.grad(lambda z: jnp.sum(w * vq(z).quantized))(z),
      jax.grad(lambda z: jnp.sum(w * q.l2_normalize(z)))(z)))(z)
  np.testing.assert_allclose(np.asarray(through_codes), np.asarray(identity), atol=1e-6)
  assert float(jnp.abs(through_codes).sum()) > 0.1


def test_commitment_loss_is_beta_times_distance_to_codes():
  vq = q.VectorQuantizer(8, 4, commitment_weight=0.25, rngs=rngs(0))
  z = _normal(4, (10, 4))
  out, grad = jax.jit(lambda z: (vq(z), jax.grad(lambda z: vq(z).commitment_loss)(z)))(z)
  expected = 0.25 * np.mean(np.square(np.asarray(out.latents) - np.asarray(out.quantized)))
  assert float(out.commitment_loss) == pytest.approx(expected, rel=1e-5)
  assert expected > 0
  assert float(jnp.abs(grad).sum()) > 0


def test_ema_update_moves_codes_towards_their_assigned_vectors():
  codebook = _unit(np.eye(4, 3, dtype=np.float32) + 0.01)
  state = q.Codebook(jnp.asarray(codebook), jnp.zeros(4), jnp.zeros((4, 3)))
  target = _unit([[1.0, 1.0, 0.0]])
  latents = _unit(target + 0.05 * np.random.default_rng(0).normal(size=(20, 3)))
  codes = jnp.zeros(20, jnp.int32)  # all assigned to code 0
  ema = jax.jit(functools.partial(q.ema_update, decay=0.9))
  new = ema(state, jnp.asarray(latents), codes)
  # From empty statistics the code becomes the (renormalized) mean of its vectors.
  np.testing.assert_allclose(np.asarray(new.codebook[0]), _unit(latents.mean(0)), atol=1e-5)
  np.testing.assert_allclose(np.asarray(new.cluster_size), [2.0, 0, 0, 0], atol=1e-6)
  np.testing.assert_allclose(np.asarray(new.embed_avg[0]), 0.1 * latents.sum(0), atol=1e-5)
  # Unassigned codes keep their direction.
  np.testing.assert_allclose(np.asarray(new.codebook[1:]), codebook[1:], atol=1e-6)

  # From a code with history, one step moves it part of the way (decay 0.9).
  old = q.Codebook(jnp.asarray(codebook), jnp.full(4, 10.0), jnp.asarray(codebook) * 10.0)
  moved = ema(old, jnp.asarray(latents), codes)
  before = float(codebook[0] @ target[0])
  after = float(np.asarray(moved.codebook[0]) @ target[0])
  assert before < after < 0.999
  np.testing.assert_allclose(np.linalg.norm(np.asarray(moved.codebook), axis=-1), 1.0,
                             rtol=1e-5)


def test_dead_code_replacement_replaces_exactly_the_codes_under_threshold():
  vocab, dim, num_vectors = 12, 5, 40
  rng = np.random.default_rng(0)
  threshold = q.dead_code_threshold(num_vectors, vocab, 32.0)  # 40 / (32 * 12)
  assert threshold == pytest.approx(40 / 384)
  cluster_size = np.full(vocab, 1.0, np.float32)
  dead = np.array([1, 4, 5, 11])
  cluster_size[dead] = [0.0, threshold * 0.99, 0.01, 0.1]
  cluster_size[7] = threshold  # exactly at the threshold: alive
  state = q.Codebook(jnp.asarray(_unit(rng.normal(size=(vocab, dim)))),
                     jnp.asarray(cluster_size), jnp.asarray(rng.normal(size=(vocab, dim)),
                                                            jnp.float32))
  latents = _unit(rng.normal(size=(num_vectors, dim)))
  new, replaced = jax.jit(q.replace_dead_codes, static_argnums=3)(
      state, jnp.asarray(latents), jax.random.key(0, impl="rbg"), threshold)
  assert int(replaced) == len(dead)
  alive = np.setdiff1d(np.arange(vocab), dead)
  for field in ("codebook", "cluster_size", "embed_avg"):  # untouched, bit for bit
    np.testing.assert_array_equal(np.asarray(getattr(new, field))[alive],
                                  np.asarray(getattr(state, field))[alive])
  fresh = np.asarray(new.codebook)[dead]
  # Each replaced code is one of the batch's encoder vectors, all distinct.
  matches = [np.flatnonzero(np.all(np.isclose(latents, row, atol=1e-6), axis=1))
             for row in fresh]
  assert all(len(m) == 1 for m in matches)
  assert len({int(m[0]) for m in matches}) == len(dead)
  np.testing.assert_allclose(np.asarray(new.cluster_size)[dead], threshold)
  np.testing.assert_allclose(np.asarray(new.embed_avg)[dead], fresh * threshold, rtol=1e-6)


def test_update_applies_replacement_only_when_switched_on():
  z = _normal(5, (2, 8, 4))
  changed = {}
  for replace_c in (32.0, None):
    vq = q.VectorQuantizer(64, 4, replace_c=replace_c, rngs=rngs(0))
    key = jax.random.key(0, impl="rbg")
    out, replaced = nnx.jit(lambda vq, z: (vq(z), vq.update(vq(z), key)))(vq, z)
    replaced = int(replaced)
    used = np.unique(np.asarray(out.codes))
    changed[replace_c] = replaced
    cluster = np.asarray(vq.cluster_size[...])
    assert np.all(cluster[used] > 0)
    if replace_c is None:
      assert replaced == 0
      assert np.count_nonzero(cluster) == len(used)
    else:
      # 16 vectors, 64 codes: a code needs more than 1.56 hits to clear 1/32 of a share.
      threshold = q.dead_code_threshold(16, 64, 32.0)
      assert replaced == int(np.sum(0.01 * np.bincount(np.asarray(out.codes).ravel(),
                                                       minlength=64) < threshold))
  assert changed[32.0] > 0


def test_usage_and_perplexity():
  stats = jax.jit(q.usage_and_perplexity, static_argnums=1)
  usage, ppl = stats(jnp.array([0, 1, 2, 3]), 8)
  assert float(usage) == pytest.approx(0.5) and float(ppl) == pytest.approx(4.0, rel=1e-5)
  usage, ppl = stats(jnp.zeros(4, jnp.int32), 8)
  assert float(usage) == pytest.approx(1 / 8) and float(ppl) == pytest.approx(1.0)


def test_optimizer_over_params_skips_the_codebook():
  class Tiny(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones(4))
      self.vq = q.VectorQuantizer(8, 4, rngs=rngs(0))

  model = Tiny()
  params = nnx.state(model, nnx.Param)
  opt_state = optax.adam(1e-3).init(params)
  leaves = jax.tree.leaves(opt_state)
  assert all(leaf.size in (1, 4) for leaf in leaves)  # count, mu, nu of w only
