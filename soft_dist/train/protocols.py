"""Test metrics of one run under several evaluation protocols, from its per-epoch val/test reports.

Papers on noisy labels do not agree on which epoch's test number they print, and the protocols differ by
more than the methods do on small test sets, so a run records all of them side by side:

* ``val_selected``: the epoch AND branch with the best validation score over the whole run (ties: the
  earlier epoch; within an epoch the teacher, as :func:`choose_branch`). model.pt and
  ``results["model"]`` hold it under ``train.model_epoch=best`` (and ``auto`` for a method without a
  teacher);
* ``last``: the last epoch, the branch chosen on validation at that epoch (what results.json's
  ``test.chosen`` holds; model.pt under ``train.model_epoch=last``, and ``auto`` for a method with an EMA
  teacher). ``results["model"]["protocol"]`` names the one model.pt follows;
* ``mean_last_5``: the mean over the last 5 epochs (fewer when the run is shorter; ``num_epochs`` says how
  many), of every branch, and of the branch chosen on validation at the last epoch;
* ``best_on_test``: the best TEST score over all epochs and branches, marked ``optimistic: true``. It
  picks the epoch with the test labels, so it overstates what a user of the method gets; it is here only
  to compare with published tables (the official SOFT code reports it).

A branch choice made on validation says how much evidence it had: ``val_samples`` (N, the validation
images) and ``val_margin_samples`` (correctly classified validation images of the chosen branch minus
those of the best other branch, each ``round(accuracy * N)``; None with a single branch). With
``select_metric = mean_class_accuracy`` the margin still counts images, so it can be <= 0.

Pure numpy/stdlib: no torch, Ray or DALI, so summaries of finished runs can use it anywhere.
"""

from __future__ import annotations

import math

import numpy as np

PROTOCOLS = ("val_selected", "last", "mean_last_5", "best_on_test")
# train.model_epoch's rules as the console and the model card say them (soft_dist.train.selection applies them)
EPOCH_RULE_WORDS = {"best": "the epoch with the best validation score", "last": "the last epoch of the run"}
METRICS = ("accuracy", "mean_class_accuracy")
LAST_K = 5
TEACHER = "teacher"


class ProtocolError(ValueError):
    """Per-epoch records that cannot be evaluated (missing keys, repeated epochs, ...)."""


def choose_branch(val_reports: dict[str, dict], metric: str) -> str:
    """The branch with the best VALIDATION ``metric``; ties go to the teacher (the steadier branch)."""
    order = sorted(val_reports, key=lambda b: (val_reports[b][metric], b == TEACHER), reverse=True)
    return order[0]


def correct_count(report: dict) -> int:
    """Correctly classified images of one report {accuracy, num_samples}: round(accuracy * N)."""
    return int(round(report["accuracy"] * report["num_samples"]))


def branch_choice(val_reports: dict[str, dict], metric: str) -> dict:
    """The validation choice at one epoch and the evidence for it.

    val_reports: branch -> {accuracy, mean_class_accuracy, num_samples}.
    Returns {branch, val_score, val_samples, val_margin_samples} (margin None with one branch)."""
    chosen = choose_branch(val_reports, metric)
    others = [b for b in val_reports if b != chosen]
    margin = None
    if others:
        margin = correct_count(val_reports[chosen]) - max(correct_count(val_reports[b]) for b in others)
    return {"branch": chosen, "val_score": val_reports[chosen][metric],
            "val_samples": int(val_reports[chosen]["num_samples"]), "val_margin_samples": margin}


def _check(records: list[dict], metric: str) -> tuple[list[dict], bool]:
    """Records sorted by epoch; whether they carry test reports (all or none)."""
    if metric not in METRICS:
        raise ProtocolError(f"select metric {metric!r} is not one of {list(METRICS)}")
    if not records:
        raise ProtocolError("no per-epoch records: the run has not finished an epoch")
    for n, record in enumerate(records):
        for key in ("epoch", "val"):
            if key not in record:
                raise ProtocolError(f"record {n} has no '{key}' (keys: {sorted(record)})")
        if not record["val"]:
            raise ProtocolError(f"epoch {record['epoch']}: empty 'val' reports")
    ordered = sorted(records, key=lambda r: r["epoch"])
    epochs = [r["epoch"] for r in ordered]
    if len(set(epochs)) != len(epochs):
        raise ProtocolError(f"an epoch appears twice in {epochs}")
    with_test = [r.get("test") is not None for r in ordered]
    if any(with_test) and not all(with_test):
        missing = [r["epoch"] for r, t in zip(ordered, with_test) if not t]
        raise ProtocolError(f"epochs {missing} have no test reports while others do")
    return ordered, all(with_test)


def _scores(test: dict | None, branch: str) -> dict:
    if test is None:
        return {"accuracy": None, "mean_class_accuracy": None}
    return {m: test[branch][m] for m in METRICS}


def _score_of(entry: dict, metric: str) -> float:
    value = entry[metric]
    return -math.inf if value is None else value


def _per_branch(test: dict | None, branches) -> dict:
    return {b: _scores(test, b) for b in branches}


def compute_protocols(records: list[dict], metric: str) -> dict:
    """Every protocol's test numbers from a run's per-epoch records.

    records: the metrics.jsonl records of one run (any order), each at least {"epoch": int,
        "val": {branch: {accuracy, mean_class_accuracy, num_samples}}, "test": same or None}; all with
        or all without test reports.
    metric: the select metric (``train.select_metric``) used for every choice, on validation and, for
        best_on_test, on test.

    Returns {"select_metric", "epochs" (records used), "has_test", and one entry per name in PROTOCOLS}.
    Every protocol has ``branch``, ``accuracy``, ``mean_class_accuracy`` (test; None without a test split)
    and ``branches`` (branch -> the same numbers); ``epoch`` (``epochs`` and ``num_epochs`` for
    mean_last_5); validation choices add ``val_score``, ``val_samples``, ``val_margin_samples``.
    ``best_on_test`` is None without a test split."""
    ordered, has_test = _check(records, metric)
    branches = list(ordered[-1]["val"])

    # val_selected: exactly the running selection of soft_dist.train.selection (a later epoch must be strictly better).
    best_record, best_choice = None, None
    for record in ordered:
        choice = branch_choice(record["val"], metric)
        if best_choice is None or choice["val_score"] > best_choice["val_score"]:
            best_record, best_choice = record, choice
    val_selected = {"epoch": best_record["epoch"], **best_choice,
                    **_scores(best_record.get("test"), best_choice["branch"]),
                    "branches": _per_branch(best_record.get("test"), branches)}

    final = ordered[-1]
    final_choice = branch_choice(final["val"], metric)
    last = {"epoch": final["epoch"], **final_choice, **_scores(final.get("test"), final_choice["branch"]),
            "branches": _per_branch(final.get("test"), branches)}

    window = ordered[-LAST_K:]
    means = {b: {m: (float(np.mean([r["test"][b][m] for r in window])) if has_test else None) for m in METRICS}
             for b in branches}
    mean_last = {"epochs": [r["epoch"] for r in window], "num_epochs": len(window), **final_choice,
                 **means[final_choice["branch"]], "branches": means}

    best_on_test = None
    if has_test:
        # Teacher first within an epoch and strict ">" across: ties go to the earlier epoch, then the teacher.
        order = sorted(branches, key=lambda b: b != TEACHER)
        top, own = None, {}
        for record in ordered:
            for b in order:
                score = record["test"][b][metric]
                entry = {"epoch": record["epoch"], "branch": b, **_scores(record["test"], b)}
                if b not in own or score > _score_of(own[b], metric):
                    own[b] = entry
                if top is None or score > _score_of(top, metric):
                    top = entry
        best_on_test = {**top, "metric": metric, "optimistic": True,
                        "branches": {b: {k: v for k, v in own[b].items() if k != "branch"} for b in branches}}

    return {"select_metric": metric, "epochs": len(ordered), "has_test": has_test,
            "val_selected": val_selected, "last": last, "mean_last_5": mean_last, "best_on_test": best_on_test}


# Columns per protocol in cells.csv (fixed, so that every row of a grid has the same columns).
COLUMN_FIELDS = {
    "val_selected": ("accuracy", "mean_class_accuracy", "branch", "epoch", "val_samples", "val_margin_samples"),
    "last": ("accuracy", "mean_class_accuracy", "branch", "epoch", "val_samples", "val_margin_samples"),
    "mean_last_5": ("accuracy", "mean_class_accuracy", "branch", "num_epochs", "val_samples", "val_margin_samples"),
    "best_on_test": ("accuracy", "mean_class_accuracy", "branch", "epoch"),
}


def protocol_columns(protocols: dict | None) -> dict:
    """Flat ``<protocol>_<field>`` columns (COLUMN_FIELDS) of :func:`compute_protocols`'s record; every
    value None when ``protocols`` or a protocol is None."""
    out = {}
    for name, fields in COLUMN_FIELDS.items():
        entry = (protocols or {}).get(name) or {}
        for key in fields:
            out[f"{name}_{key}"] = entry.get(key)
    return out
