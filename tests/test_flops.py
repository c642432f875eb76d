"""The analytic FLOP count agrees with XLA's count of the compiled forward pass."""

from __future__ import annotations

import jax
import pytest
from flax import nnx

from fourm import modalities
from fourm.models import flops
from fourm.models import fourm as fourm_model
from tests.test_model import random_batch

NAMES = ("tok_rgb", "tok_depth", "caption")


@pytest.mark.slow
def test_forward_flops_match_xla_cost_analysis():
  config = fourm_model.FourMConfig(dim=128, encoder_depth=2, decoder_depth=2, num_heads=4)
  batch_size, input_budget, target_budget = 2, 48, 40
  model = fourm_model.FourM(config, NAMES, modalities.SMALL_LAYOUT, input_budget,
                            target_budget, rngs=nnx.Rngs(0))
  batch = random_batch(NAMES, batch_size=batch_size, input_budget=input_budget,
                       target_budget=target_budget)
  graphdef, state = nnx.split(model)

  def forward_with_dense_heads(state, batch):
    model = nnx.merge(graphdef, state)
    hidden = model(batch).hidden
    return [model.logits(name, hidden) for name in NAMES]

  cost = jax.jit(forward_with_dense_heads).lower(state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # Dense heads score every decoder slot with every head.
  counted = batch_size * flops.forward_flops(
      config, input_budget, target_budget, dict.fromkeys(NAMES, target_budget))
  # XLA also counts norms, softmaxes, masks and embeddings, which the model count leaves out.
  assert 0.97 < counted / cost["flops"] <= 1.0, (counted, cost["flops"])
