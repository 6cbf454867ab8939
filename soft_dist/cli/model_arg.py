"""The MODEL argument that `soft-dist export` and `soft-dist eval` share (no heavy imports)."""

from __future__ import annotations

import argparse


def add_model_argument(parser: argparse.ArgumentParser, metavar: str) -> None:
    """A positional ``model``: a model.pt, or a run directory holding one (local or s3://)."""
    # str, not Path: a run directory may be s3://bucket/prefix (pathlib would turn it into s3:/bucket).
    parser.add_argument("model", metavar=metavar, help="a model.pt, or a run directory holding one (local or s3://)")
