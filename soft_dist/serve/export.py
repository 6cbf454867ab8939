"""A model.pt as files other programs can run: ONNX (onnxruntime, TensorRT, ...) and TorchScript
(C++ libtorch, Python without soft-dist), each beside a model card.

Both files hold the chosen branch with the normalisation inside (network.NormalisedNet):

    input  "image"   float32 [batch, 3, S, S], RGB in [0, 1], S = the model's image_size, the batch free
    output "logits"  float32 [batch, C], classes in the order of model_card.json's "classes"

ONNX goes through torch's torch.export-based exporter (``dynamo=True``, which needs onnxscript): the
TorchScript-based one still exists in torch 2.14 but warns that it will be removed.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

from soft_dist.serve.network import LoadedModel, inference_network

ONNX_OPSET = 18
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"
FORMATS = ("onnx", "torchscript")
INPUT_NAME, OUTPUT_NAME = "image", "logits"
# The example batch the graphs are traced with. Not 1: torch.export specialises a dimension of size 1,
# which would fix the batch at 1. Tests run other batch sizes to show that it stays free.
EXAMPLE_BATCH = 2


def example_input(image_size: int, batch: int = EXAMPLE_BATCH) -> torch.Tensor:
    """A fixed [batch, 3, S, S] tensor in [0, 1] (seeded: the same export twice gives the same files)."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, image_size, image_size, generator=generator)


def embedded_meta(model: LoadedModel) -> dict[str, str]:
    """What travels inside each exported file, so that it still names its classes and input when it is
    copied without its card: string keys and values (ONNX metadata_props, TorchScript extra files)."""
    meta = model.meta
    return {"soft_dist.classes": json.dumps(list(meta["classes"])),
            "soft_dist.image_size": str(int(meta["image_size"])),
            "soft_dist.input": "RGB float32 in [0, 1], NCHW; mean/std normalisation is inside the graph",
            "soft_dist.source_sha256": model.sha256}


def export_onnx(model: LoadedModel, path: Path) -> Path:
    """Write ``path`` (one self-contained .onnx file, opset ONNX_OPSET, dynamic batch)."""
    import onnx

    net = inference_network(model)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(net, (example_input(int(model.meta["image_size"])),), None, dynamo=True,
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET,
                                dynamic_shapes=({0: batch},), verbose=False)
    proto = program.model_proto
    for key, value in embedded_meta(model).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))  # weights inline: a ResNet-50 is ~100 MB, far under protobuf's 2 GB
    return path


def export_torchscript(model: LoadedModel, path: Path) -> Path:
    """Write ``path``: a traced TorchScript module (torch.jit.load; runs without soft-dist)."""
    net = inference_network(model)
    with warnings.catch_warnings():
        # torch 2.14 marks torch.jit as deprecated (FutureWarning); it is still what libtorch loads.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(net, example_input(int(model.meta["image_size"])))
        torch.jit.save(traced, str(path), _extra_files={k: v.encode() for k, v in embedded_meta(model).items()})
    return path


def file_record(path: Path, fmt: str) -> dict:
    """{name, format, bytes, sha256} of an exported file (plus the opset for ONNX)."""
    data = path.read_bytes()
    record = {"name": path.name, "format": fmt, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if fmt == "onnx":
        record["opset"] = ONNX_OPSET
    return record


def export_files(model: LoadedModel, formats: list[str], out: Path) -> list[dict]:
    """Export ``model`` in each of ``formats`` (from FORMATS) into ``out``; their file records."""
    out.mkdir(parents=True, exist_ok=True)
    writers = {"onnx": (export_onnx, ONNX_FILE), "torchscript": (export_torchscript, TORCHSCRIPT_FILE)}
    records = []
    for fmt in formats:
        write, name = writers[fmt]
        records.append(file_record(write(model, out / name), fmt))
    return records
