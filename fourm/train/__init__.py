"""Training: config loading, optimizer, sharded train step, checkpoints, the loop."""
