"""Import and export of the reference PyTorch 4M checkpoints (safetensors)."""
