"""Test-wide set-up: eight fake CPU devices for sharding tests, absl flags for grain."""

import os

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The commands turn jax's persistent compilation cache on; tests (and the commands they
# start) compile afresh, so no run depends on what an earlier one left in ~/.cache.
os.environ["FOURM_COMPILATION_CACHE"] = "off"

from absl import flags  # noqa: E402

# grain's multiprocess workers read absl flags; pytest never parses them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
