"""Benchmarks (not run in CI); numbers go to docs/BENCHMARKS.md."""
