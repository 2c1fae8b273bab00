"""Benchmarks and fault matrices, run as scripts (`python benchmarks/<name>.py`) and asserted by tests."""
