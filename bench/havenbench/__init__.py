"""Helpers of Haven's benchmarks (standard library only). See bench/README.md."""
