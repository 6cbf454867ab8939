"""`soft-dist eval` on a really trained model: its numbers equal ones computed by hand from the
model's predictions on the same split; shards listing the classes in another order give the same
numbers; other class names, a missing split or a file that is not a model are errors naming the files."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from soft_dist.cli import main
from soft_dist.data.format import load_manifest
from soft_dist.data.loader import build_eval_loader
from soft_dist.serve.evaluate import eval_view
from soft_dist.serve.network import build_network, read_model
from soft_dist.shard.digits import load_digits_rgb
from shard_fixtures import jpeg_bytes

DIGITS = [str(d) for d in range(10)]


def run_eval(model, shards, out, split="test") -> dict:
    assert main(["eval", str(model), "--shards", str(shards), "--split", split, "--loader", "torch",
                 "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def by_hand(run_dir, shards, split="test") -> tuple[np.ndarray, np.ndarray]:
    """(targets in the model's class order, predictions) over the split, looping over the eval loader
    here and remapping shard labels by name here."""
    model = read_model(run_dir)
    net = build_network(model)
    classes = list(load_manifest(shards).classes)
    loader = build_eval_loader(shards, split, eval_view(model.meta, "torch", 1), 64)
    targets, preds = [], []
    with torch.no_grad():
        for batch in loader.epoch(0):
            keep = batch.valid
            preds += net(batch.image[keep]).argmax(1).tolist()
            targets += [model.classes.index(classes[int(y)]) for y in batch.label[keep]]
    loader.close()
    return np.array(targets), np.array(preds)


def expected_numbers(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> dict:
    """Accuracy, mean class accuracy, per-class precision/recall/F1 and confusion counts, with plain loops."""
    cm = [[int(np.sum((targets == t) & (preds == p))) for p in range(num_classes)] for t in range(num_classes)]
    per_class = []
    for c in range(num_classes):
        tp, predicted, support = cm[c][c], sum(row[c] for row in cm), sum(cm[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append((precision, recall, f1, support))
    present = [c for c in range(num_classes) if per_class[c][3]]
    return {"accuracy": float(np.mean(targets == preds)), "counts": cm, "per_class": per_class,
            "mean_class_accuracy": float(np.mean([per_class[c][1] for c in present]))}


def assert_report_matches(report: dict, expected: dict) -> None:
    assert report["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert report["mean_class_accuracy"] == pytest.approx(expected["mean_class_accuracy"], abs=1e-12)
    assert report["confusion_matrix"]["counts"] == expected["counts"]
    for row, (precision, recall, f1, support) in zip(report["per_class"], expected["per_class"]):
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision, recall, f1), abs=1e-12)
        assert row["support"] == support


def test_eval_numbers_equal_hand_computed_ones(reference_run, digit_shards, tmp_path):
    report = run_eval(reference_run, digit_shards, tmp_path / "test.json")
    targets, preds = by_hand(reference_run, digit_shards)
    expected = expected_numbers(targets, preds, 10)
    assert report["num_samples"] == len(targets) == 360
    assert_report_matches(report, expected)
    assert 0.2 < report["accuracy"] < 1.0  # trained (chance is 0.1), and not a degenerate constant
    assert [r["class"] for r in report["per_class"]] == DIGITS and report["shards"]["remapped"] is False
    model = read_model(reference_run)
    assert (report["model"]["epoch"], report["model"]["branch"]) == (model.meta["epoch"], model.meta["branch"])
    # model.pt's own test score came from the same split through the training's loader
    assert report["accuracy"] == pytest.approx(model.meta["selection"]["test"]["accuracy"], abs=1e-12)
    with (tmp_path / "test_confusion.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true \\ predicted", *DIGITS]
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == expected["counts"] and [r[0] for r in rows[1:]] == DIGITS
    assert (tmp_path / "test_confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["files"] == {"confusion_csv": "test_confusion.csv", "confusion_png": "test_confusion.png"}


def imagefolder_shards(root, out, order: list[str]):
    """Real digits as an imagefolder (train/ and test/ by class name) sharded with the class order ``order``."""
    from soft_dist.shard.build import ShardConfig, build_shards

    if not root.exists():
        images, labels = load_digits_rgb(32)
        for i in range(200):  # the first 150 as test, 50 more so that train is not empty
            folder = root / ("test" if i < 150 else "train") / DIGITS[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.jpg").write_bytes(jpeg_bytes(images[i]))
    build_shards(ShardConfig(layout="imagefolder", root=str(root), out=str(out), size=32, align="none",
                             min_shards=1, workers=1, progress=False, classes=order), log=lambda _: None)
    return out


def test_shards_with_another_class_order_are_remapped_by_name(reference_run, tmp_path):
    natural = imagefolder_shards(tmp_path / "folder", tmp_path / "natural", DIGITS)
    permuted_order = ["7", "3", "9", "0", "5", "1", "8", "2", "6", "4"]
    permuted = imagefolder_shards(tmp_path / "folder", tmp_path / "permuted", permuted_order)
    assert list(load_manifest(permuted).classes) == permuted_order

    same = run_eval(reference_run, natural, tmp_path / "natural.json")
    remapped = run_eval(reference_run, permuted, tmp_path / "permuted.json")
    assert (same["shards"]["remapped"], remapped["shards"]["remapped"]) == (False, True)
    assert same["num_samples"] == remapped["num_samples"] == 150
    targets, preds = by_hand(reference_run, natural)
    expected = expected_numbers(targets, preds, 10)
    assert_report_matches(same, expected)
    assert_report_matches(remapped, expected)
    assert [r["class"] for r in remapped["per_class"]] == DIGITS  # always the model's order


def test_other_class_names_are_an_error_naming_both_files(reference_run, digit_shards, tmp_path, capsys):
    shards = shutil.copytree(digit_shards, tmp_path / "renamed")
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["classes"] = [*DIGITS[:9], "nine"]
    (shards / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "e.json"
    assert main(["eval", str(reference_run), "--shards", str(shards), "--loader", "torch",
                 "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "classes do not match by name" in err
    assert "missing from the shards: ['9']" in err and "not known to the model: ['nine']" in err
    assert str(reference_run / "model.pt") in err and str(shards / "manifest.json") in err
    assert not out.exists()


def test_missing_split_and_foreign_files_exit_2(reference_run, digit_shards, tmp_path, capsys):
    common = ["--shards", str(digit_shards), "--loader", "torch", "--device", "cpu", "--out", str(tmp_path / "e.json")]
    assert main(["eval", str(reference_run), "--split", "holdout", *common]) == 2
    assert f"{digit_shards / 'manifest.json'}: no split 'holdout'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing.pt"), *common]) == 2
    assert f"{tmp_path / 'missing.pt'}: no model file" in capsys.readouterr().err
    (tmp_path / "fake.pt").write_bytes(b"\x00" * 64)
    assert main(["eval", str(tmp_path / "fake.pt"), *common]) == 2
    assert f"{tmp_path / 'fake.pt'}: not a readable model file" in capsys.readouterr().err
    assert main(["eval", str(reference_run), "--shards", str(tmp_path / "noshards"), "--out",
                 str(tmp_path / "e.json")]) == 2
    assert f"{tmp_path / 'noshards' / 'manifest.json'}: not found" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_ray_workers_give_the_numbers_of_one_process(reference_run, digit_shards, ray_cluster, tmp_path, loader):
    def report(workers: int) -> dict:
        out = tmp_path / f"{loader}-w{workers}.json"
        assert main(["eval", str(reference_run), "--shards", str(digit_shards), "--split", "train",
                     "--loader", loader, "--device", "cpu", "--threads", "1", "--batch-size", "100",
                     "--workers", str(workers), "--no-progress", "--out", str(out)]) == 0
        return json.loads(out.read_text())

    one, three = report(1), report(3)
    # 1258 training images: not a multiple of 3 workers (nor of 100), so the workers' last batches are padded
    assert one["num_samples"] == three["num_samples"] == 1258
    assert (one.pop("workers"), three.pop("workers")) == (1, 3)
    assert (tmp_path / f"{loader}-w3_confusion.csv").read_text() == (tmp_path / f"{loader}-w1_confusion.csv").read_text()
    one.pop("files"), three.pop("files")  # their names differ
    assert three == one  # every number, the confusion counts and the per-class rows
