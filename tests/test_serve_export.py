"""`soft-dist export`: ONNX and TorchScript files of a really trained model give the same class
probabilities as the PyTorch network on real digit images, at any batch size, and the model card
matches model.pt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from soft_dist.cli import main
from soft_dist.serve.export import EXAMPLE_BATCH, ONNX_OPSET
from soft_dist.serve.network import build_network, read_model
from soft_dist.shard.digits import load_digits_rgb
from soft_dist.train import model_file

PARITY = 1e-4  # largest absolute difference of class probabilities allowed


def digit_images(count: int, size: int) -> torch.Tensor:
    """The first ``count`` real digits as RGB in [0, 1], [count, 3, size, size] (the exports' input)."""
    images, _ = load_digits_rgb(size)
    return torch.from_numpy(images[:count]).permute(0, 3, 1, 2).float() / 255.0


def reference_probabilities(run_dir, images: torch.Tensor) -> np.ndarray:
    """Class probabilities [N, C] of model.pt's network in PyTorch, normalised here by hand."""
    model = read_model(run_dir)
    mean = torch.tensor(model.meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.softmax(build_network(model)((images - mean) / std), dim=1).numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("batch", [48, 1, 5])  # 48 real images; 1 and 5 differ from the export's example batch
def test_onnx_and_torchscript_match_pytorch(reference_run, reference_export, batch):
    import onnxruntime as ort

    size = model_file.load_model(reference_run).meta["image_size"]
    images = digit_images(48, size)[:batch]
    assert batch != EXAMPLE_BATCH
    expected = reference_probabilities(reference_run, images)
    assert expected.shape == (batch, 10) and len(set(expected.argmax(1))) > (1 if batch > 5 else 0)

    session = ort.InferenceSession(str(reference_export / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"image": images.numpy()})
    onnx_diff = np.abs(softmax(onnx_logits) - expected).max()

    scripted = torch.jit.load(str(reference_export / "model.torchscript.pt"))
    with torch.no_grad():
        ts_diff = np.abs(torch.softmax(scripted(images), dim=1).numpy() - expected).max()
    print(f"batch {batch}: max |p_onnx - p_torch| = {onnx_diff:.2e}, max |p_torchscript - p_torch| = {ts_diff:.2e}")
    assert onnx_diff <= PARITY and ts_diff <= PARITY


def test_model_card_matches_model_pt(reference_run, reference_export):
    import hashlib

    import onnx

    meta = model_file.load_model(reference_run).meta
    card = json.loads((reference_export / "model_card.json").read_text())
    assert card["classes"] == meta["classes"] == [str(d) for d in range(10)]
    assert card["input"]["shape"] == ["batch", 3, meta["image_size"], meta["image_size"]]
    pre = card["preprocessing"]
    assert (pre["mean"], pre["std"], pre["channel_order"]) == (meta["mean"], meta["std"], "RGB")
    assert pre["normalisation"] == "inside the exported model"
    assert card["alignment"] == meta["alignment"] and card["alignment"]["method"] == "none"
    assert (card["branch"], card["epoch"], card["method"]) == (meta["branch"], meta["epoch"], meta["method"])
    assert card["training_config_sha256"] == meta["config_sha256"] == model_file.config_digest(meta["config"])
    assert card["noise"] == meta["noise"] and card["noise"]["rate"] == 0.3
    assert card["metrics"]["val"] == meta["selection"]["val"] and card["metrics"]["test"]["num_samples"] == 360
    assert card["opset"] == ONNX_OPSET
    model_pt = (reference_run / "model.pt").read_bytes()
    assert card["source"]["sha256"] == hashlib.sha256(model_pt).hexdigest()
    assert {f["name"] for f in card["files"]} == {"model.onnx", "model.torchscript.pt"}
    for f in card["files"]:
        assert f["sha256"] == hashlib.sha256((reference_export / f["name"]).read_bytes()).hexdigest()
    proto = onnx.load(str(reference_export / "model.onnx"))
    assert {o.domain: o.version for o in proto.opset_import}[""] == ONNX_OPSET
    assert json.loads({p.key: p.value for p in proto.metadata_props}["soft_dist.classes"]) == meta["classes"]
    text = (reference_export / "MODEL_CARD.md").read_text()
    assert "inside the model" in text and f"epoch {meta['epoch']}" in text and "model.onnx" in text
    # SOFT under train.model_epoch=auto: model.pt is the last epoch, and the card says how the epoch was chosen
    assert card["epoch_rule"] == meta["selection"]["rule"] == "last" and "the last epoch of the run" in text
    assert f"(width {meta['architecture']['width']}, " in text
    # the validation score is agreement with noisy labels, and the card says so
    assert card["metrics"]["val_labels"] == "noisy" and "validation (noisy labels)" in text
    assert "against the noisy training labels" in text


def test_export_errors_name_the_file(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'nowhere' / 'model.pt'}: no model file" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    assert main(["export", str(tmp_path / "other.pt"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "other.pt") in err and "not a soft-dist model file" in err
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["export", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'notes.txt'}: not a readable model file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
