"""RUN/model.pt, the one model a run delivers: its format, writing and reading.

The file holds the weights of the epoch and branch chosen on the VALIDATION split (soft_dist.train.selection)
without the uncertainty head, plus plain metadata (classes, image size, normalisation, alignment, ...): only
tensors, numbers, strings, lists and dicts, so it loads with ``torch.load(..., weights_only=True)``.
serve, audit and bench read it through :func:`load_model`.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from soft_dist.storage import RunStore, is_remote
from soft_dist.train.errors import CheckpointError

MODEL_FILE = "model.pt"
MODEL_FORMAT = "soft-dist-model/1"


@dataclass(frozen=True)
class ModelFile:
    """A loaded model.pt: ``state_dict`` of the chosen branch (no uncertainty head) and ``meta``."""

    state_dict: dict[str, torch.Tensor]
    meta: dict


def branch_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The inference weights of a branch: its state dict without the uncertainty head, on CPU."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if not k.startswith("uncertainty.")}


def save_model(store: RunStore, weights: dict[str, torch.Tensor], meta: dict) -> None:
    """Write RUN/model.pt atomically (replaces the previous best)."""
    buffer = io.BytesIO()
    torch.save({"format": MODEL_FORMAT, "state_dict": weights, "meta": meta}, buffer)
    store.write_bytes(MODEL_FILE, buffer.getvalue())


def read_model_bytes(location: str | Path) -> tuple[bytes, str]:
    """(bytes, where) of a model.pt: a file ending in .pt, or a run directory holding one (local or
    s3://...); ``where`` names the file in errors. CheckpointError when there is no such file."""
    location = str(location)
    # A local file under another name (model.bin, a download without its suffix) is read as a file too.
    if location.endswith(".pt") or (not is_remote(location) and Path(location).is_file()):
        folder, _, name = location.rpartition("/")
        store, rel = RunStore(folder or "."), name
    else:
        store, rel = RunStore(location), MODEL_FILE
    where = store.path(rel)
    try:
        return store.read_bytes(rel), where
    except OSError as err:  # FileNotFoundError included
        raise CheckpointError(f"{where}: no model file ({err})") from err


def load_model(location: str | Path) -> ModelFile:
    """Read a model.pt: a file ending in .pt, or a run directory holding one (local or s3://...).
    Errors name the file and the problem."""
    data, where = read_model_bytes(location)
    return parse_model(data, where)


def parse_model(data: bytes, where: str) -> ModelFile:
    """A model.pt's bytes as a ModelFile; CheckpointError naming ``where`` when they are not one."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a foreign or truncated file
        raise CheckpointError(f"{where}: not a readable model file ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{where}: not a soft-dist model file (expected format {MODEL_FORMAT!r})")
    return ModelFile(payload["state_dict"], payload["meta"])


def config_digest(config: dict) -> str:
    """sha256 of the config's canonical JSON: the same on every process and machine."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
