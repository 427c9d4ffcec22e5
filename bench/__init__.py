"""Benchmarks: ratios against bare bluesky (or the bare service) measured in the same run."""
