"""jax's persistent compilation cache, on by default for the `fourm` commands and the
notebook: a second `fourm generate` (or a notebook restarted) reads the programs the
first one compiled instead of compiling them again.

`FOURM_COMPILATION_CACHE` chooses: a directory, or "off". By default the cache lives in
`$XDG_CACHE_HOME/fourm/jax` (`~/.cache/fourm/jax`). jax keys each entry by the program,
the jax / XLA version and the device, so a stale entry is never used; delete the
directory to reclaim the space.
"""

from __future__ import annotations

import os
import warnings

ENV = "FOURM_COMPILATION_CACHE"
OFF = frozenset({"off", "0", "false", "no", "none"})
# Programs that compile faster than this are not worth a file: tiny helpers would only
# add disk traffic. The sampler's and the train step's programs take longer.
MIN_COMPILE_SECONDS = 0.2


def default_directory() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "fourm", "jax")


def enable(directory: str | None = None) -> str | None:
  """Turns the cache on (in `directory`, else as `FOURM_COMPILATION_CACHE` says, else the
  default); returns the directory, or None when it is off or cannot be created (a
  read-only home must not stop a command: it only warns)."""
  setting = directory if directory is not None else os.environ.get(ENV, "")
  if setting.strip().lower() in OFF:
    return None
  path = os.path.abspath(os.path.expanduser(setting or default_directory()))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as error:
    warnings.warn(f"{ENV}: cannot create {path} ({error.strerror}); compiling without "
                  "a persistent cache", stacklevel=2)
    return None
  import sys
  if "jax" not in sys.modules:
    # Before jax is imported its flags come from the environment: a command that never
    # compiles (fourm show, fourm info) then does not pay for importing jax here. A
    # JAX_* variable the user set wins.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", path)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                          str(MIN_COMPILE_SECONDS))
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  import jax
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path
