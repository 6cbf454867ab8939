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
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from soft_dist.config import field_declaration
from soft_dist.method.model import TORCHVISION_WIDTH
from soft_dist.run_files import MODEL_FILE
from soft_dist.storage import RunStore, is_remote
from soft_dist.train.errors import CheckpointError

# The backbones a model file may name: model.name's choices.
ARCHITECTURES = field_declaration("model.name")[0].metadata["choices"]
MIN_WIDTH = field_declaration("model.width")[0].metadata["range"][0]
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
    check_meta(payload.get("meta"), where)
    return ModelFile(payload["state_dict"], payload["meta"])


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_meta(meta, where: str) -> None:
    """Refuse metadata that serve, eval and export could not rebuild or feed a network from (a file
    edited by hand, or written by another program), naming the field: CheckpointError."""
    def bad(field: str, why: str) -> CheckpointError:
        return CheckpointError(f"{where}: metadata field '{field}' {why}")

    if not isinstance(meta, dict):
        raise bad("meta", f"must be a mapping, got {type(meta).__name__}")
    classes = meta.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        raise bad("classes", f"must list at least 2 class names, got {classes!r}")
    if meta.get("num_classes", len(classes)) != len(classes):
        raise bad("num_classes", f"is {meta.get('num_classes')!r} but 'classes' names {len(classes)}")
    size = meta.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 1024:
        raise bad("image_size", f"must be an integer in [8, 1024], got {size!r}")
    for name, low_open in (("mean", False), ("std", True)):
        values = meta.get(name)
        if not isinstance(values, list) or len(values) != 3 or not all(_finite(v) for v in values):
            raise bad(name, f"needs 3 finite numbers (RGB), got {values!r}")
        if low_open and min(values) <= 0:
            raise bad(name, f"must be > 0, got {values!r}")
    crop = meta.get("eval_crop_fraction", 1.0)
    if not _finite(crop) or not 0 < crop <= 1:
        raise bad("eval_crop_fraction", f"must be in (0, 1], got {crop!r}")
    arch = meta.get("architecture")
    if not isinstance(arch, dict) or arch.get("name") not in ARCHITECTURES:
        name = arch.get("name") if isinstance(arch, dict) else arch
        raise bad("architecture.name", f"must be one of {list(ARCHITECTURES)}, got {name!r}")
    width = arch.get("width", TORCHVISION_WIDTH)  # model files written before model.width existed are torchvision's width
    if not isinstance(width, int) or isinstance(width, bool) or width < MIN_WIDTH:
        raise bad("architecture.width", f"must be an integer >= {MIN_WIDTH}, got {width!r}")


def config_digest(config: dict) -> str:
    """sha256 of the config's canonical JSON: the same on every process and machine."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
