"""Training: the config's defaults, optimizer, sharded train step, the loop (config
loading and checkpoint I/O are the neutral `fourm.config` and `fourm.checkpoint`)."""
