"""Test-wide set-up: eight fake CPU devices for sharding tests, a compilation cache of the
session's own, samplers compiled for speed, absl flags for grain."""

import os

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# jax's persistent compilation cache, in a directory of this test session's own: the
# many tests (and the commands they start in subprocesses) that build the same tiny
# models compile each program once per session, and no session reads what an earlier
# one left (in ~/.cache or anywhere). The pytest-xdist workers and subprocesses inherit
# the variable from the process that made the directory, which removes it at exit.
# FOURM_TEST_COMPILATION_CACHE=off compiles every program afresh.
_CACHE_ENV = "FOURM_TEST_COMPILATION_CACHE"
if _CACHE_ENV not in os.environ:
  import atexit
  import shutil
  import tempfile
  os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="fourm-test-jax-cache-")
  atexit.register(shutil.rmtree, os.environ[_CACHE_ENV], ignore_errors=True)
os.environ["FOURM_COMPILATION_CACHE"] = os.environ[_CACHE_ENV]

# Samplers compile at LLVM -O0 (fourm/generation/sampler.py): the same tokens
# (test_cpu_fast_compilation_gives_the_same_tokens compares both), and most generation
# tests compile far longer than they sample. The train and tokenizer steps compile as
# a user's do. FOURM_CPU_FAST_COMPILE=0 tests the samplers as users compile them.
os.environ.setdefault("FOURM_CPU_FAST_COMPILE", "1")

# jax first (after XLA_FLAGS): enable() then sets jax's config rather than JAX_*
# variables, which subprocesses would inherit over their own FOURM_COMPILATION_CACHE.
import jax  # noqa: E402,F401

from fourm import compilation_cache  # noqa: E402

compilation_cache.enable()

from absl import flags  # noqa: E402

# grain's multiprocess workers read absl flags; pytest never parses them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
