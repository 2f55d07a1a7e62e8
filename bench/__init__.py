"""Benchmarks of fastredir beside the kernel floor and the alternatives."""
