"""fourm's reference_* schedules against the reference implementation's own output
(tests/fixtures/reference/schedules.json, written by make_reference_fixtures.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fourm.generation import schedules, step_plan

with open(os.path.join(os.path.dirname(__file__), "fixtures", "reference",
                       "schedules.json")) as f:
  CASES = json.load(f)["cases"]


def _id(case):
  return f"{case['kind']}-{case['tokens']}-in-{case['steps']}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_reference_token_schedules(case):
  counts = schedules.tokens_per_step(case["tokens"], case["steps"],
                                     f"reference_{case['kind']}")
  expected = np.asarray(case["counts"])
  if (expected >= 0).all():
    np.testing.assert_array_equal(counts, expected)
  else:
    # The reference's -1 last step: the same counts, that token taken back from the
    # last step that has one (documented in schedules.py).
    assert (counts >= 0).all() and counts.sum() == case["tokens"]
    assert np.abs(counts - expected).sum() == 2 and counts[-1] == 0


@pytest.mark.parametrize("case", [c for c in CASES if min(c["counts"]) >= 0], ids=_id)
def test_reference_temperature_schedules(case):
  counts = np.asarray(case["counts"])
  for key, expected in case["temperatures"].items():
    t_max, t_min = (float(t) for t in key.split("->"))
    for kind, values in expected.items():
      got = schedules.temperatures(len(counts), t_max, t_min, f"reference_{kind}",
                                   counts=counts)
      np.testing.assert_allclose(got, values, rtol=1e-12, atol=1e-12, err_msg=f"{kind} {key}")


def test_the_issue_s_example_and_empty_steps_are_kept():
  assert list(schedules.tokens_per_step(196, 8, "reference_cosine")) == [
      7, 21, 32, 38, 38, 32, 21, 7]
  counts = step_plan.step_counts(np.array([5, 196]), 8, "reference_cosine")
  assert counts.shape == (2, 8) and counts[0, 0] == 0 and counts.sum(1).tolist() == [5, 196]


def test_converted_models_default_to_the_reference_cosine_for_grids():
  from fourm.generation.chain import default_chain
  plain = default_chain(["tok_rgb", "caption"])
  faithful = default_chain(["tok_rgb", "caption"], reference=True)
  assert plain[0].token_schedule == "cosine"
  assert faithful[0].token_schedule == "reference_cosine"
  assert faithful[1] == plain[1]  # sequences decode left to right either way
