"""Helpers for tests and benchmarks (like ``ray.cluster_utils``): not used by the stages."""
