"""Joining a multi-process run from the launcher's environment, before jax starts.

  FOURM_COORDINATOR=host:port FOURM_NUM_PROCESSES=N FOURM_PROCESS_ID=i
      explicit (launch/multiprocess.py sets these for N local processes; any cluster can)
  FOURM_DISTRIBUTED=auto
      jax's own detection: SLURM (srun), Cloud TPU pod slices, Open MPI
  FOURM_CPU_DEVICES=K
      K CPU devices in this process (testing multi-device code without accelerators)

With none of them set the run is a single process and nothing happens here.
"""

from __future__ import annotations

import os

import jax

from fourm.errors import UsageError


def initialize_from_env(environ=os.environ) -> bool:
  """Calls `jax.distributed.initialize` as the environment asks; True if it did."""
  cpu_devices = environ.get("FOURM_CPU_DEVICES")
  if cpu_devices:
    jax.config.update("jax_num_cpu_devices", int(cpu_devices))
  coordinator = environ.get("FOURM_COORDINATOR")
  if coordinator:
    try:
      num_processes = int(environ["FOURM_NUM_PROCESSES"])
      process_id = int(environ["FOURM_PROCESS_ID"])
    except (KeyError, ValueError) as error:
      raise UsageError("FOURM_COORDINATOR is set, so FOURM_NUM_PROCESSES and "
                       f"FOURM_PROCESS_ID must be integers too ({error})") from None
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return True
  if environ.get("FOURM_DISTRIBUTED") == "auto":
    jax.distributed.initialize()
    return True
  return False
