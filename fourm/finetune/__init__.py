"""Fine-tuning the 4M encoder for downstream tasks."""
