"""Benchmarks of the image service against the ceiling of Python gRPC on the same machine."""
