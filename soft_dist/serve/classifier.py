"""Stage 2 of `soft-dist predict`: aligned face JPEGs -> class probabilities, with model.pt in PyTorch or
an exported model.onnx in onnxruntime.

Both backends take the same input, RGB float32 [B, 3, S, S] in [0, 1] (the evaluation view: shorter side
resized to S / eval_crop_fraction, centre crop S); the normalisation is inside the network
(network.NormalisedNet), as in the exported files.

Batch columns (see serve.faces): in ``status`` [B], ``jpeg`` [B]; added ``predicted`` [B] int64 (the
class index, -1 when the row was not classified) and ``probs`` [B, C] float32 (NaN rows when not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soft_dist.metrics import softmax
from soft_dist.serve.faces import CLASSIFIED
from soft_dist.train.errors import CheckpointError

BACKENDS = ("torch", "onnxruntime")
CARD_JSON = "model_card.json"  # serve.model_card writes it beside the exported files
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class ModelSpec:
    """What predict needs to know of a model, from model.pt's metadata or an export's model_card.json.

    location: the file the backend loads (model.pt / run dir, or model.onnx); alignment: the metadata's
    alignment dict (method, margin, shard_image_size, jpeg_quality, ...)."""

    backend: str
    location: str
    classes: tuple[str, ...]
    image_size: int
    eval_crop_fraction: float
    alignment: dict


def onnx_files(location: str) -> tuple[Path, Path]:
    path = Path(location)
    onnx_path = path / ONNX_FILE if path.is_dir() else path
    card_path = onnx_path.parent / CARD_JSON
    for p in (onnx_path, card_path):
        if not p.is_file():
            raise CheckpointError(f"{p}: not found (--backend onnxruntime takes a folder written by `soft-dist "
                                  f"export --format onnx`, or the model.onnx in it, with {CARD_JSON} beside it)")
    return onnx_path, card_path


def load_spec(location: str, backend: str) -> ModelSpec:
    """The ModelSpec of ``location`` for ``backend``; CheckpointError naming the file when it is missing or
    not what the backend runs."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        from soft_dist.serve.network import read_model

        if str(location).endswith(".onnx"):
            raise CheckpointError(f"{location}: an ONNX file runs with --backend onnxruntime")
        model = read_model(location)
        meta = model.meta
        return ModelSpec("torch", model.where, tuple(meta["classes"]), int(meta["image_size"]),
                         float(meta["eval_crop_fraction"]), dict(meta.get("alignment") or {}))
    onnx_path, card_path = onnx_files(location)
    try:
        card = json.loads(card_path.read_text())
        return ModelSpec("onnxruntime", str(onnx_path), tuple(card["classes"]), int(card["input"]["image_size"]),
                         float(card["preprocessing"]["eval_crop_fraction"]), dict(card.get("alignment") or {}))
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{card_path}: not a soft-dist model card ({type(err).__name__}: {err})") from err


class _TorchBackend:
    def __init__(self, spec: ModelSpec, device: str):
        import torch

        from soft_dist.serve.network import inference_network, read_model

        self.torch, self.device = torch, device
        self.net = inference_network(read_model(spec.location)).to(device)

    def logits(self, images: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.net(self.torch.from_numpy(images).to(self.device)).float().cpu().numpy()


class _OnnxBackend:
    def __init__(self, spec: ModelSpec, threads: int | None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(spec.location, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: images})[0]


class FaceClassifier:
    """Callable on a batch from serve.faces (see the module docstring). Loads the model once per instance
    (once per Ray actor)."""

    def __init__(self, spec: ModelSpec, device: str = "cpu", torch_threads: int | None = None):
        import torch
        from torchvision.transforms import v2

        from soft_dist.data.torch_loader import eval_geometry

        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        self.spec = spec
        self.view = v2.Compose([*eval_geometry(spec.image_size, spec.eval_crop_fraction),
                                v2.ToDtype(torch.float32, scale=True)])
        self.backend = (_TorchBackend(spec, device) if spec.backend == "torch"
                        else _OnnxBackend(spec, torch_threads))

    def images(self, jpegs: list[bytes]) -> np.ndarray:
        """JPEG bytes -> float32 [N, 3, S, S] in [0, 1], decoded as the torch loader decodes shard samples."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        views = [self.view(decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.RGB))
                 for b in jpegs]
        return torch.stack(views).numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, num_classes = len(batch["status"]), len(self.spec.classes)
        rows = [i for i in range(n) if batch["status"][i] in CLASSIFIED]
        probs = np.full((n, num_classes), np.nan, dtype=np.float32)
        predicted = np.full(n, -1, dtype=np.int64)
        if rows:
            p = softmax(self.backend.logits(self.images([batch["jpeg"][i] for i in rows]))).astype(np.float32)
            probs[rows] = p
            predicted[rows] = p.argmax(axis=1)
        out = {k: v for k, v in batch.items() if k != "jpeg"}  # the crops are not needed downstream
        return {**out, "probs": probs, "predicted": predicted}
