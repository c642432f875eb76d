"""The import contracts of pyproject.toml ([tool.importlinter]) hold: imports follow the
data flow of DESIGN.md, so a backwards import fails the suite."""

import os
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def test_every_import_contract_is_kept():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
  assert any(c["type"] == "layers" for c in contracts)
  result = subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  assert f"Contracts: {len(contracts)} kept, 0 broken." in result.stdout
