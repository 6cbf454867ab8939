"""Benchmarks, one module per `soft-dist bench` kind, and the harness they share (harness.py)."""
