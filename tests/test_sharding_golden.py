"""Golden shardings: every parameter of the tiny model (configs/tiny_synthetic.py) on a
2 x 2 x 2 (data, fsdp, tensor) mesh under the default logical-axis table, pinned in
tests/fixtures/sharding_tiny_2x2x2.json; and overrides of that table from the config.

A change to the table, to a layer's logical axes or to the model's parameters fails the
golden test, naming the parameters whose sharding changed. When the change is meant,
regenerate the fixture and commit it with the change:

    .venv/bin/python -m tests.test_sharding_golden --write
    FOURM_WRITE_GOLDEN=1 .venv/bin/python -m pytest tests/test_sharding_golden.py  # same
"""

from __future__ import annotations

import argparse
import functools
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from fourm import config as config_lib
from fourm.errors import UsageError
from fourm.nn import sharding
from fourm.train import mesh as mesh_lib
from fourm.train import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny_synthetic.py")
GOLDEN = os.path.join(ROOT, "tests", "fixtures", "sharding_tiny_2x2x2.json")
# Abstract: the specs depend on the mesh's shape only, so no devices are needed and the
# fixture can be rewritten outside pytest (which alone gives 8 CPU devices).
MESH = jax.sharding.AbstractMesh((2, 2, 2), mesh_lib.AXES)


# The architecture the fixture was written for (the demo's model of 2026-12-06), pinned so
# that tuning the demo does not rewrite it: a 128-wide model's SwiGLU width (341) does not
# split over `tensor`, which would leave those rules untested.
PINNED = ("model.dim=256", "model.encoder_depth=4", "model.decoder_depth=4")


def tiny_config(*overrides: str):
  return config_lib.load_config(CONFIG, PINNED + overrides)


@functools.cache
def tiny_params() -> nnx.State:
  """The tiny model's parameters as shapes only (the overrides do not change them)."""
  return nnx.state(nnx.eval_shape(state_lib.model_factory(tiny_config())), nnx.Param)


def _path(keys) -> str:
  return "/".join(str(key) for key in keys)


def _as_json(spec: P) -> list:
  return [list(entry) if isinstance(entry, tuple) else entry for entry in spec]


def specs(rules: sharding.Rules) -> dict[str, list]:
  """{parameter path: its PartitionSpec on MESH under `rules`, as JSON lists}."""
  tree = sharding.partition_specs(tiny_params(), MESH, rules)
  return {_path(keys): _as_json(spec) for keys, spec in nnx.to_flat_state(tree)}


def logical_axes() -> dict[str, tuple]:
  return {_path(keys): tuple(variable.get_metadata()["out_sharding"])
          for keys, variable in nnx.to_flat_state(tiny_params())}


def write_golden() -> None:
  os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
  golden = specs(sharding.DEFAULT_RULES)
  # One parameter a line, so a regenerated file's diff reads as the list of changes.
  lines = [f"  {json.dumps(name)}: {json.dumps(golden[name])}" for name in sorted(golden)]
  with open(GOLDEN, "w") as f:
    f.write("{\n" + ",\n".join(lines) + "\n}\n")


def differences(expected: dict, actual: dict) -> list[str]:
  """One line per parameter whose sharding changed, appeared or disappeared."""
  lines = [f"  {name}: {expected[name]} -> {actual[name]}"
           for name in sorted(expected.keys() & actual.keys()) if expected[name] != actual[name]]
  lines += [f"  {name}: {actual[name]}, not in the golden file"
            for name in sorted(actual.keys() - expected.keys())]
  lines += [f"  {name}: in the golden file, not in the model"
            for name in sorted(expected.keys() - actual.keys())]
  return lines


# The golden file ---------------------------------------------------------------------------


def test_every_parameter_sharding_matches_the_golden_file():
  if os.environ.get("FOURM_WRITE_GOLDEN") == "1":
    write_golden()
    pytest.skip(f"FOURM_WRITE_GOLDEN=1: wrote {GOLDEN}")
  with open(GOLDEN) as f:
    expected = json.load(f)
  changed = differences(expected, specs(sharding.DEFAULT_RULES))
  assert not changed, (
      f"{len(changed)} parameter shardings differ from {os.path.relpath(GOLDEN, ROOT)}:\n"
      + "\n".join(changed) + "\nIf that is meant: python -m tests.test_sharding_golden --write")


def test_the_golden_file_is_not_all_replicated():
  # A guard on the fixture itself, so a regenerated one that silently replicates
  # everything (a table that lost its rules, say) does not pass as golden.
  with open(GOLDEN) as f:
    golden = json.load(f)
  assert golden["encoder/0/mlp/fc1/kernel"] == ["fsdp", "tensor"]
  assert sum(any(golden[name]) for name in golden) > len(golden) // 2


# Overrides from the config -----------------------------------------------------------------


def test_config_overrides_change_the_specs_they_name_and_no_others():
  config = tiny_config("sharding.rules.embed=None", "--config.sharding.rules.mlp=fsdp")
  rules = mesh_lib.axis_rules(config, MESH)
  before, after, axes = specs(sharding.DEFAULT_RULES), specs(rules), logical_axes()
  for name, names in axes.items():
    if "embed" not in names and "mlp" not in names:
      assert after[name] == before[name], name
    for logical, entry in zip(names, after[name], strict=True):
      if logical == "embed":
        assert entry is None, (name, after[name])  # embed dims are replicated now
  # fc1 is [embed, mlp]: fsdp freed by embed goes to mlp, tensor is no longer used.
  assert after["encoder/0/mlp/fc1/kernel"] == [None, "fsdp"]
  assert after["encoder/0/mlp/fc2/kernel"] == ["fsdp", None]
  assert differences(before, after)


def test_overrides_from_the_command_line_take_none_an_axis_and_tuples():
  config = tiny_config()
  assert not config.sharding.rules  # no overrides by default
  # The same field in turn None, a string and a tuple: ConfigDict must not lock its type.
  both = ("fsdp", "tensor")
  for text, target in (("None", None), ("fsdp", "fsdp"), ("('fsdp','tensor')", both),
                       ("fsdp,tensor", both), ("", None)):
    config_lib.apply_override(config, f"--config.sharding.rules.embed={text}")
    assert dict(mesh_lib.axis_rules(config, MESH))["embed"] == target, text
  assert mesh_lib.axis_rules(tiny_config(), MESH) == sharding.DEFAULT_RULES


@pytest.mark.parametrize("override, message", [
    ("embd=None", r"config\.sharding\.rules\.embd: no logical axis 'embd'; known: .*'embed'"),
    ("mlp=tensr", r"config\.sharding\.rules\.mlp = 'tensr': no mesh axis 'tensr'"),
    ("act_batch=data,pipe", r"config\.sharding\.rules\.act_batch = 'data,pipe': no mesh axis "
                            r"'pipe'; the mesh has \('data', 'fsdp', 'tensor'\)"),
    ("heads=3", r"config\.sharding\.rules\.heads is 3; expected None, a mesh axis"),
])
def test_bad_overrides_name_the_config_field(override, message):
  config = tiny_config(f"sharding.rules.{override}")
  with pytest.raises(UsageError, match=message):
    mesh_lib.axis_rules(config, MESH)


def test_other_groups_still_refuse_unknown_fields():
  with pytest.raises(UsageError, match="no field 'sharding.ruels'"):
    tiny_config("sharding.ruels=1")


# The batch ---------------------------------------------------------------------------------


def _batch_spec(mesh, rules) -> P:
  rows = np.arange(16, dtype=np.int32).reshape(8, 2)
  return mesh_lib.global_batch({"x": rows}, mesh, rules)["x"].sharding.spec


def test_the_batch_is_split_over_the_axes_of_the_act_batch_rule():
  assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
  mesh = jax.make_mesh((2, 2, 2), mesh_lib.AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  rules = mesh_lib.axis_rules(tiny_config(), mesh)
  assert mesh_lib.batch_axes(mesh, rules) == ("data", "fsdp")
  # The batch arrives as the model's activations are constrained.
  activations = sharding.logical_to_mesh(("act_batch", "act_len"), (8, 5), mesh, rules)
  assert _batch_spec(mesh, rules) == activations == P(("data", "fsdp"), None)
  with pytest.raises(UsageError, match=r"data x fsdp = 4 batch shards"):
    mesh_lib.check_batch_divides(mesh, 6, rules)

  wider = mesh_lib.axis_rules(tiny_config("sharding.rules.act_batch=data,fsdp,tensor"), mesh)
  assert _batch_spec(mesh, wider) == P(("data", "fsdp", "tensor"), None)
  with pytest.raises(UsageError, match=r"data x fsdp x tensor = 8 batch shards"):
    mesh_lib.check_batch_divides(mesh, 4, wider)

  replicated = mesh_lib.axis_rules(tiny_config("sharding.rules.act_batch=None"), mesh)
  assert _batch_spec(mesh, replicated) == P(None, None)
  mesh_lib.check_batch_divides(mesh, 3, replicated)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="Rewrites the golden sharding fixture.")
  parser.add_argument("--write", action="store_true", help=f"write {GOLDEN}")
  if parser.parse_args().write:
    write_golden()
    print(f"wrote {GOLDEN}")
  else:
    parser.print_help()
