"""Independent, full-tensor, in-memory NumPy oracles for tests and benchmarks."""
