"""Errors of run files, in a module without torch so that the command line can catch them while
`soft-dist --help` and `config show` stay light (the checkpoint and model-file modules import torch)."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint or model file that cannot be used; the message names the file and why."""
