"""The persistent compilation cache the commands turn on (fourm/compilation_cache.py).

Each case runs in a fresh process: jax reads its cache settings once per process, and
the test session itself runs with the cache off (conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from fourm import cli
from test_interop import load_fixture, write_reference_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, env: dict[str, str]) -> str:
  done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout.strip()


def test_the_setting_reaches_jax_before_and_after_it_is_imported(tmp_path):
  enable = "from fourm import compilation_cache as c; print(c.enable())"
  read = "import jax; print(jax.config.jax_compilation_cache_dir)"
  for name, code in (("before", f"{enable}\n{read}"), ("after", f"import jax\n{enable}\n{read}")):
    directory = str(tmp_path / name)  # jax imported after enable(), and before it
    lines = _python(code, {"FOURM_COMPILATION_CACHE": directory}).splitlines()
    assert lines == [directory, directory], name
  assert _python("from fourm import compilation_cache as c; print(c.enable())",
                 {"FOURM_COMPILATION_CACHE": "off"}) == "None"
  # A directory that cannot be made: a warning, no cache, and the command goes on.
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.warns(UserWarning, match="cannot create"):
    from fourm import compilation_cache
    assert compilation_cache.enable(str(blocker / "cache")) is None


@pytest.mark.slow
def test_a_second_generate_reads_every_program_from_the_cache(tmp_path):
  fixture, arrays = load_fixture("4m7_tokens")
  source = write_reference_file(tmp_path / "model.safetensors", fixture, arrays)
  workdir = str(tmp_path / "wd")
  assert cli.main(["convert", "--from", "reference", source, "--out", workdir]) == 0
  cache = tmp_path / "cache"
  command = [sys.executable, "-m", "fourm.cli", "generate", "--checkpoint", workdir,
             "--condition", "caption=a red cube", "--targets", "tok_rgb",
             "--num-steps", "3", "--seed", "0"]
  # Every program is written, however fast it compiles: with the default threshold a
  # small program that compiles just under it in one run and just over it in the other
  # (a busy machine) would make a spurious difference.
  env = {**os.environ, "FOURM_COMPILATION_CACHE": str(cache),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  outputs = []
  for run in range(2):
    out = tmp_path / f"out{run}"
    done = subprocess.run(command + ["--out", str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs.append(dict(np.load(out / "tokens.npz")))
    entries = sorted(os.listdir(cache))
    if run == 0:
      first = entries
      assert any("sampler" in e or "jit" in e for e in first), first
  # Nothing new was written: every program the second run needed was found in the cache.
  assert entries == first
  for key in outputs[0]:
    np.testing.assert_array_equal(outputs[0][key], outputs[1][key], err_msg=key)
