"""The model card beside exported files: ``model_card.json`` (for programs) and ``MODEL_CARD.md``
(for people), both from model.pt's metadata and the exported files' records."""

from __future__ import annotations

import json
from pathlib import Path

from soft_dist.method.model import TORCHVISION_WIDTH
from soft_dist.safe_text import markdown_text
from soft_dist.serve.network import LoadedModel
from soft_dist.train.protocols import EPOCH_RULE_WORDS

CARD_FORMAT = "soft-dist-model-card/1"
CARD_JSON, CARD_MD = "model_card.json", "MODEL_CARD.md"


def preprocessing(meta: dict) -> dict:
    """The input the exported files expect, as the training's evaluation view made it (data.loader's
    eval transform): shorter side resized, centre crop, RGB scaled to [0, 1]; normalisation is inside."""
    size, fraction = int(meta["image_size"]), float(meta["eval_crop_fraction"])
    return {"channel_order": meta["channel_order"], "layout": "NCHW", "dtype": "float32", "value_range": [0.0, 1.0],
            "resize_shorter_side_to": round(size / fraction), "center_crop": size,
            "eval_crop_fraction": fraction, "normalisation": "inside the exported model",
            "mean": list(meta["mean"]), "std": list(meta["std"])}


def build_card(model: LoadedModel, files: list[dict]) -> dict:
    """model_card.json's content for ``model`` exported as ``files`` (export.file_record rows)."""
    import torch

    from soft_dist import __version__

    meta = model.meta
    size, classes = int(meta["image_size"]), list(meta["classes"])
    selection = meta.get("selection", {})
    onnx_opsets = [f["opset"] for f in files if "opset" in f]
    return {
        "format": CARD_FORMAT,
        "source": {"model_file": model.where, "sha256": model.sha256},
        "classes": classes,
        "num_classes": len(classes),
        "dataset": meta.get("dataset"),
        "input": {"name": "image", "shape": ["batch", 3, size, size], "image_size": size},
        "output": {"name": "logits", "shape": ["batch", len(classes)],
                   "meaning": "softmax over the last axis gives class probabilities in the order of 'classes'"},
        "preprocessing": preprocessing(meta),
        "alignment": meta.get("alignment", {}),
        "architecture": meta["architecture"],
        "branch": meta["branch"],
        "epoch": meta["epoch"],
        "method": meta.get("method"),
        "noise": meta.get("noise"),
        "training_config_sha256": meta.get("config_sha256"),
        # which epoch: train.model_epoch's rule as it ran (model files from before it: the best on validation)
        "epoch_rule": selection.get("rule", "best"),
        "metrics": {"selected_by": selection.get("metric"), "val": selection.get("val"),
                    "val_labels": (meta.get("config") or {}).get("data", {}).get("val_labels"),
                    "test": selection.get("test")},
        "files": files,
        "opset": onnx_opsets[0] if onnx_opsets else None,
        "exported_with": {"soft_dist": __version__, "torch": torch.__version__},
    }


NOISY_VAL_NOTE = ("Validation was scored against the noisy training labels (what a user without clean labels "
                  "has): it measures agreement with those labels, so it sits below the accuracy on clean labels.")


def _val_labels_words(val_labels: str | None) -> str:
    return f"{val_labels} labels" if val_labels else "labels not recorded"


def _metric_line(name: str, report: dict | None) -> str:
    if not report:
        return f"- {name}: not measured"
    return (f"- {name}: accuracy {report['accuracy']:.4f}, mean class accuracy {report['mean_class_accuracy']:.4f} "
            f"({report['num_samples']} images)")


def card_markdown(card: dict) -> str:
    """MODEL_CARD.md: what the model is, how to feed it and what it scored."""
    pre, arch = card["preprocessing"], card["architecture"]
    size = card["input"]["image_size"]
    noise = card["noise"] or {}
    lines = [
        f"# soft-dist model: {markdown_text(card['dataset'])} ({card['num_classes']} classes)",
        "",
        f"{arch['name']} (width {arch.get('width', TORCHVISION_WIDTH)}, small stem: {arch.get('small_stem')}), "
        f"method `{card['method']}`, the `{card['branch']}` "
        f"branch of epoch {card['epoch']} (counted from 1; {EPOCH_RULE_WORDS[card.get('epoch_rule', 'best')]}), "
        f"the branch chosen on validation by {card['metrics']['selected_by']}. "
        f"Training noise: {noise.get('kind')} at rate {noise.get('rate')} (seed {noise.get('seed')}). "
        f"Training config sha256 `{card['training_config_sha256']}`.",
        "",
        "## Classes (output order)",
        "",
        *[f"- {i}: {markdown_text(name)}" for i, name in enumerate(card["classes"])],
        "",
        "## Input",
        "",
        f"- `image`: float32 `[batch, 3, {size}, {size}]`, {pre['channel_order']}, values in [0, 1]; any batch size.",
        f"- Resize the shorter side to {pre['resize_shorter_side_to']} px, centre-crop {pre['center_crop']} px "
        f"(eval_crop_fraction {pre['eval_crop_fraction']}), as training evaluated.",
        f"- Normalisation is **inside the model** (mean {pre['mean']}, std {pre['std']}): do not normalise again.",
        f"- Faces as in training: alignment {json.dumps(card['alignment'])}.",
        "",
        "## Output",
        "",
        f"- `logits`: float32 `[batch, {card['num_classes']}]`; softmax gives class probabilities.",
        "",
        "## Scores at selection",
        "",
        _metric_line(f"validation ({_val_labels_words(card['metrics'].get('val_labels'))})", card["metrics"]["val"]),
        _metric_line("test (shard labels, no injected noise)", card["metrics"]["test"]),
        *([""] + [NOISY_VAL_NOTE] if card["metrics"].get("val_labels") == "noisy" else []),
        "",
        "## Files",
        "",
        *[f"- `{f['name']}` ({f['format']}{', opset ' + str(f['opset']) if 'opset' in f else ''}), "
          f"sha256 `{f['sha256']}`" for f in card["files"]],
        "",
        f"Exported from `{card['source']['model_file']}` (sha256 `{card['source']['sha256']}`) with soft-dist "
        f"{card['exported_with']['soft_dist']} and torch {card['exported_with']['torch']}.",
        "",
    ]
    return "\n".join(lines)


def write_card(card: dict, out: Path) -> tuple[Path, Path]:
    """Write model_card.json and MODEL_CARD.md into ``out``."""
    json_path, md_path = out / CARD_JSON, out / CARD_MD
    json_path.write_text(json.dumps(card, indent=2) + "\n")
    md_path.write_text(card_markdown(card))
    return json_path, md_path
