"""vqp benchmarks: datasets, measurement scripts and their recorded results (RESULTS.md)."""
