"""Data: record format, synthetic world, ingest, augmentation and the grain pipeline."""
