"""Benchmarks: p2pd against a raw-pyzmq baseline run in the same process tree (see docs/PERFORMANCE.md)."""
