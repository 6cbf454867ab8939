"""Evaluation protocols (soft_dist.train.protocols) on hand-made per-epoch records, and on a real short
single-process run: model.pt holds what its protocol chose, and results.json agrees with metrics.jsonl."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from soft_dist.train.protocols import (
    COLUMN_FIELDS,
    PROTOCOLS,
    ProtocolError,
    branch_choice,
    compute_protocols,
    protocol_columns,
)

ROOT = Path(__file__).resolve().parents[1]


def rep(correct: int, n: int, mca: float | None = None) -> dict:
    """A report of ``correct`` of ``n`` images right (mean class accuracy = accuracy unless given)."""
    return {"accuracy": correct / n, "mean_class_accuracy": correct / n if mca is None else mca, "num_samples": n}


def record(epoch: int, val: dict[str, int], test: dict[str, int] | None, n_val: int = 179, n_test: int = 360):
    return {"epoch": epoch, "val": {b: rep(c, n_val) for b, c in val.items()},
            "test": None if test is None else {b: rep(c, n_test) for b, c in test.items()}}


# Validation peaks at epoch 2 (teacher, 150 vs 147 of 179), test peaks at epoch 4 (student).
SIX = [
    record(0, {"student": 100, "teacher": 90}, {"student": 200, "teacher": 190}),
    record(1, {"student": 130, "teacher": 135}, {"student": 260, "teacher": 270}),
    record(2, {"student": 147, "teacher": 150}, {"student": 300, "teacher": 305}),
    record(3, {"student": 140, "teacher": 145}, {"student": 310, "teacher": 306}),
    record(4, {"student": 146, "teacher": 144}, {"student": 330, "teacher": 320}),
    record(5, {"student": 145, "teacher": 146}, {"student": 315, "teacher": 318}),
]


def test_each_protocol_on_a_six_epoch_run():
    p = compute_protocols(SIX, "accuracy")
    assert p["epochs"] == 6 and p["has_test"] and p["select_metric"] == "accuracy"

    vs = p["val_selected"]
    assert (vs["epoch"], vs["branch"]) == (2, "teacher")
    assert vs["accuracy"] == 305 / 360 and vs["branches"]["student"]["accuracy"] == 300 / 360
    assert (vs["val_score"], vs["val_samples"], vs["val_margin_samples"]) == (150 / 179, 179, 3)

    last = p["last"]
    assert (last["epoch"], last["branch"], last["accuracy"]) == (5, "teacher", 318 / 360)
    assert last["val_margin_samples"] == 1 and last["branches"]["student"]["accuracy"] == 315 / 360

    m5 = p["mean_last_5"]
    assert m5["epochs"] == [1, 2, 3, 4, 5] and m5["num_epochs"] == 5 and m5["branch"] == "teacher"
    assert m5["accuracy"] == pytest.approx(np.mean([270, 305, 306, 320, 318]) / 360, abs=1e-12)
    assert m5["branches"]["student"]["accuracy"] == pytest.approx(np.mean([260, 300, 310, 330, 315]) / 360)

    best = p["best_on_test"]
    assert (best["epoch"], best["branch"], best["accuracy"], best["optimistic"]) == (4, "student", 330 / 360, True)
    assert best["branches"]["teacher"] == {"epoch": 4, "accuracy": 320 / 360, "mean_class_accuracy": 320 / 360}
    assert set(p) >= set(PROTOCOLS)


def test_records_in_any_order_give_the_same_answer():
    shuffled = SIX[:]
    random.Random(3).shuffle(shuffled)
    assert compute_protocols(shuffled, "accuracy") == compute_protocols(SIX, "accuracy")


def test_ties_go_to_the_earlier_epoch_then_the_teacher():
    records = [
        record(0, {"student": 100, "teacher": 90}, {"student": 200, "teacher": 210}),
        record(1, {"student": 120, "teacher": 120}, {"student": 250, "teacher": 240}),  # tie within the epoch
        record(2, {"student": 120, "teacher": 119}, {"student": 250, "teacher": 250}),  # same val score later
    ]
    p = compute_protocols(records, "accuracy")
    assert (p["val_selected"]["epoch"], p["val_selected"]["branch"]) == (1, "teacher")
    assert p["val_selected"]["val_margin_samples"] == 0
    assert p["val_selected"]["accuracy"] == 240 / 360  # the teacher's test number, though the student's is higher
    # best on test: 250 first reached by the student at epoch 1; the epoch-2 tie (both branches) loses.
    assert (p["best_on_test"]["epoch"], p["best_on_test"]["branch"]) == (1, "student")
    tie = [record(0, {"student": 10, "teacher": 10}, {"student": 20, "teacher": 20})]
    assert compute_protocols(tie, "accuracy")["best_on_test"]["branch"] == "teacher"


def test_val_selected_is_the_lexicographic_best_of_random_runs():
    """Against a brute force: max over (val score, -epoch, teacher) of every (epoch, branch)."""
    rng = random.Random(0)
    for _ in range(200):
        epochs = rng.randint(1, 8)
        recs = [record(e, {b: rng.randint(5, 9) for b in ("student", "teacher")},
                       {b: rng.randint(0, 9) for b in ("student", "teacher")}, n_val=10, n_test=10)
                for e in range(epochs)]
        pairs = [(r["val"][b]["accuracy"], -r["epoch"], b == "teacher", r["epoch"], b)
                 for r in recs for b in r["val"]]
        expected = max(pairs)[3:]
        got = compute_protocols(recs, "accuracy")["val_selected"]
        assert (got["epoch"], got["branch"]) == expected
        best_test = max((r["test"][b]["accuracy"], -r["epoch"], b == "teacher", r["epoch"], b)
                        for r in recs for b in r["test"])[3:]
        bot = compute_protocols(recs, "accuracy")["best_on_test"]
        assert (bot["epoch"], bot["branch"]) == best_test


def test_a_run_shorter_than_five_epochs_averages_what_it_has():
    p = compute_protocols(SIX[:3], "accuracy")
    assert p["mean_last_5"]["epochs"] == [0, 1, 2] and p["mean_last_5"]["num_epochs"] == 3
    assert p["mean_last_5"]["accuracy"] == pytest.approx((190 + 270 + 305) / 3 / 360)


def test_ce_with_only_a_student_branch():
    recs = [record(e, {"student": 100 + e}, {"student": 200 + 3 * e}) for e in range(3)]
    p = compute_protocols(recs, "accuracy")
    for name in ("val_selected", "last", "mean_last_5"):
        assert p[name]["branch"] == "student" and p[name]["val_margin_samples"] is None
        assert list(p[name]["branches"]) == ["student"]
    assert p["val_selected"]["epoch"] == 2 and p["best_on_test"]["branch"] == "student"


def test_a_run_without_a_test_split():
    recs = [record(e, {"student": 100 + e, "teacher": 99 + 2 * e}, None) for e in range(4)]
    p = compute_protocols(recs, "accuracy")
    assert not p["has_test"] and p["best_on_test"] is None
    assert (p["val_selected"]["epoch"], p["val_selected"]["branch"]) == (3, "teacher")  # still chosen
    for name in ("val_selected", "last", "mean_last_5"):
        assert p[name]["accuracy"] is None and p[name]["mean_class_accuracy"] is None
    columns = protocol_columns(p)
    assert columns["best_on_test_accuracy"] is None and columns["val_selected_epoch"] == 3


def test_mean_class_accuracy_selects_and_the_margin_still_counts_images():
    val = {"student": rep(150, 179, mca=0.70), "teacher": rep(148, 179, mca=0.72)}
    assert branch_choice(val, "mean_class_accuracy") == {
        "branch": "teacher", "val_score": 0.72, "val_samples": 179, "val_margin_samples": -2}
    recs = [{"epoch": 0, "val": val, "test": {"student": rep(300, 360, mca=0.9), "teacher": rep(310, 360, mca=0.8)}}]
    p = compute_protocols(recs, "mean_class_accuracy")
    assert p["val_selected"]["branch"] == "teacher"
    assert p["best_on_test"]["branch"] == "student" and p["best_on_test"]["metric"] == "mean_class_accuracy"


@pytest.mark.parametrize("records, metric, message", [
    ([], "accuracy", "no per-epoch records"),
    ([record(0, {"student": 1}, None), record(0, {"student": 2}, None)], "accuracy", "appears twice"),
    ([record(0, {"student": 1}, None), record(1, {"student": 2}, {"student": 3})], "accuracy", r"epochs \[0\]"),
    ([{"epoch": 0}], "accuracy", "has no 'val'"),
    ([record(0, {"student": 1}, None)], "top5", "select metric 'top5'"),
])
def test_bad_records_are_errors(records, metric, message):
    with pytest.raises(ProtocolError, match=message):
        compute_protocols(records, metric)


def test_columns_are_the_same_for_every_run():
    full, empty = protocol_columns(compute_protocols(SIX, "accuracy")), protocol_columns(None)
    expected = [f"{p}_{f}" for p, fields in COLUMN_FIELDS.items() for f in fields]
    assert list(full) == list(empty) == expected
    assert all(v is None for v in empty.values())
    assert full["val_selected_val_margin_samples"] == 3 and full["mean_last_5_num_epochs"] == 5


def test_the_module_imports_no_torch_ray_or_dali():
    code = ("import sys; import soft_dist.train.protocols; "
            "print([m for m in ('torch', 'ray', 'nvidia.dali') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- a real run


def test_a_real_run_records_protocols_that_match_model_pt_and_metrics_jsonl(reference_run, digit_shards):
    from soft_dist.config import load_config
    from soft_dist.data.format import load_manifest
    from soft_dist.train.model_file import load_model

    cfg = load_config(reference_run / "config.yaml")
    results = json.loads((reference_run / "results.json").read_text())

    p, model = results["protocols"], results["model"]
    # SOFT has an EMA teacher: under train.model_epoch=auto model.pt is the last epoch (protocol last)
    assert cfg.train.model_epoch == "auto" and (model["rule"], model["protocol"]) == ("last", "last")
    chosen = p["last"]
    assert (chosen["epoch"], chosen["branch"], chosen["val_score"]) == (model["epoch"], model["branch"], model["score"])
    assert {"accuracy": chosen["accuracy"], "mean_class_accuracy": chosen["mean_class_accuracy"]} == {
        k: model["test"][k] for k in ("accuracy", "mean_class_accuracy")}
    meta = load_model(reference_run).meta
    assert (meta["epoch"], meta["branch"]) == (chosen["epoch"], chosen["branch"])
    # last = results.json's test.chosen (the last epoch's validation choice)
    assert p["last"]["branch"] == results["last_epoch_branch"]
    assert p["last"]["accuracy"] == results["test"]["chosen"]["accuracy"]
    # the same function over the metrics.jsonl lines gives the same record
    lines = [json.loads(x) for x in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert compute_protocols(lines, cfg.train.select_metric) == p
    val_samples = load_manifest(digit_shards).split(cfg.data.val_split).num_samples
    assert p["val_selected"]["val_samples"] == lines[0]["val"]["student"]["num_samples"] == val_samples
    assert p["mean_last_5"]["epochs"] == [1, 2, 3]  # epochs are numbered from 1
    assert [x["selected_epoch"] for x in lines] == [1, 2, 3]  # every epoch was model.pt's in its turn
    assert list(itertools.chain(p["val_selected"]["branches"])) == ["student", "teacher"]


def test_a_real_run_saves_the_tau_it_resolved_and_logs_the_lock_in_signals(reference_run):
    from soft_dist.config import load_config

    # digits_cpu pins no tau and trains from random weights: half of uniform for the shards' 10 classes, in
    # config.yaml (with the tau_relative it resolved) and results.json
    saved = load_config(reference_run / "config.yaml").method
    assert saved.tau == pytest.approx(0.05) and saved.tau_relative == 0.5
    assert json.loads((reference_run / "results.json").read_text())["tau"] == pytest.approx(0.05)
    lines = [json.loads(x) for x in (reference_run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        assert 0.0 <= line["train"]["share_k_gt_1"] <= 1.0 and 0.0 <= line["train"]["teacher_agrees"] <= 1.0


def test_demo_prints_every_protocol_branch_and_the_evidence_for_each_choice():
    from soft_dist.cli.demo import protocol_table

    ce_records = [record(e, {"student": v}, {"student": t}) for e, (v, t) in enumerate([(100, 250), (120, 300),
                                                                                        (110, 280)])]
    test = {"chosen": {"num_samples": 360}}
    rows = [("ce", {"protocols": compute_protocols(ce_records, "accuracy"), "test": test,
                    "model": {"protocol": "val_selected"}}),
            ("soft", {"protocols": compute_protocols(SIX, "accuracy"), "test": test, "model": {"protocol": "last"}})]
    lines = protocol_table(rows)
    text = "\n".join(lines)
    assert "(360 images)" in lines[0]
    assert [line.split()[:2] for line in lines[2:6]] == [["ce", "student"], ["soft", "student"],
                                                        ["soft", "teacher"], ["soft", "chosen"]]
    # soft's val_selected: epoch 2, teacher (150 > 147 of 179), test 305/360 = 84.7
    assert lines[5].split()[2:4] == ["84.7", "(t)"]
    assert lines[4].split()[2] == "84.7" and lines[3].split()[2] == "83.3"  # both branches at that epoch
    # the records' own epoch numbers are printed as they are (files count epochs from 1)
    # each model.pt by its own protocol: soft's the last epoch (teacher 146 vs 145), ce's the best on validation
    assert "soft: model.pt = epoch 5 (protocol last), teacher, chosen on 179 noisy validation images; it beat " \
           "the other branch there by 1 image" in text
    assert "ce: model.pt = epoch 1 (protocol val_selected), student, chosen on 179 noisy validation images" in text
    # the headline difference in points and in test images: 318 - 300 = 18 images
    assert "soft - ce (model.pt against model.pt): +5.0 points = 18 of 360 test images" in text
