"""Any-to-any generation: decoding schedules, sampling, and (next) the chained sampler."""
