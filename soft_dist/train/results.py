"""The results.json record of a run (see README 'Results'), made at the end of its last epoch."""

from __future__ import annotations

import numpy as np

from soft_dist.config import Config
from soft_dist.noise.table import NoiseTable
from soft_dist.run_files import METRICS_FILE, MODEL_FILE
from soft_dist.storage import RunStore
from soft_dist.train.errors import CheckpointError
from soft_dist.train.protocols import choose_branch, compute_protocols
from soft_dist.train.runlog import read_metrics


def with_chosen(reports_by_branch: dict, chosen: str) -> dict:
    return {**reports_by_branch, "chosen": dict(reports_by_branch[chosen])}


def final_results(
    cfg: Config,
    val: dict,
    test: dict | None,
    table: NoiseTable | None,
    diagnostics: dict | None,
    throughput: dict,
    epochs_run: int,
    wall_time_s: float,
    teacher_sync: dict | None = None,
) -> dict:
    """The results.json record (see README 'Results')."""
    chosen = choose_branch(val, cfg.train.select_metric)
    return {
        "method": cfg.method.name,
        "tau": cfg.method.tau,  # the value that ran (resolved from method.tau_relative unless given)
        # protocol `last`'s branch; model.pt's is results["model"]["branch"] (its protocol: ["protocol"])
        "last_epoch_branch": chosen,
        "select_metric": cfg.train.select_metric,
        "val": with_chosen(val, chosen),
        "test": with_chosen(test, chosen) if test else None,
        "noise": {
            "kind": table.kind if table is not None else "none",
            "rate": table.rate if table is not None else 0.0,
            "seed": table.seed if table is not None else None,
            "flipped": int(table.flipped.sum()) if table is not None else 0,
            "table_sha256": table.digest() if table is not None else None,
            "diagnostics": diagnostics,
        },
        "teacher_sync": teacher_sync or {"checks": 0, "mismatches": 0},
        "throughput": throughput,
        "epochs": epochs_run,
        "wall_time_s": wall_time_s,
    }


def run_results(cfg: Config, table: NoiseTable, store: RunStore, *, val: dict, test: dict | None,
                diagnostics: dict | None, history: list[dict], world_size: int, teacher_sync: dict | None,
                model: dict, teacher_digests: list, weights, checkpoint_seconds: list[float] = ()) -> dict:
    """The record of a run whose last epoch has ``val``/``test`` reports: :func:`final_results` plus the
    throughput over the ``history`` of every epoch, model.pt's selection record ``model``, the evaluation
    protocols and the teachers' digests (and where pretrained ``weights`` came from); ``checkpoint_seconds``:
    how long rank 0's epoch checkpoints took to write and report, in this process."""
    all_speeds = [s for h in history for s in h["images_per_s_per_worker"]]
    results = final_results(
        cfg, val, test, table, diagnostics,
        throughput={"images_per_s_per_worker": float(np.median(all_speeds)),
                    "workers": world_size,
                    "images_per_s_total": float(np.median([sum(h["images_per_s_per_worker"]) for h in history])),
                    "per_epoch_images_per_s": [float(np.mean(h["images_per_s_per_worker"])) for h in history],
                    "world_size_per_epoch": [h.get("world_size", 1) for h in history]},
        epochs_run=len(history), wall_time_s=sum(h["seconds"] for h in history), teacher_sync=teacher_sync,
    )
    results["model"] = {"file": MODEL_FILE, **model}
    results["protocols"] = compute_protocols(epoch_records(store, history), cfg.train.select_metric)
    results["teacher_digests"] = teacher_digests
    results["checkpoints"] = {"timed": len(checkpoint_seconds),
                              "median_seconds": float(np.median(checkpoint_seconds)) if checkpoint_seconds else None}
    if weights is not None:
        results["pretrained"] = {"source": weights.source, "unexpected_keys": weights.unexpected}
    return results


def epoch_records(store: RunStore, history: list[dict]) -> list[dict]:
    """{epoch, val, test} of every epoch of the run, from the history; epochs trained by a version that
    did not keep val/test in the history (resumed from its checkpoint) come from metrics.jsonl."""
    if all("val" in h for h in history):
        return [{"epoch": h["epoch"], "val": h["val"], "test": h["test"]} for h in history]
    logged = {r["epoch"]: r for r in read_metrics(store)}
    records = []
    for h in history:
        source = h if "val" in h else logged.get(h["epoch"])
        if source is None:
            raise CheckpointError(f"{store.path(METRICS_FILE)}: epoch {h['epoch']} is in the "
                                  "checkpoint's history but neither it nor metrics.jsonl has its val/test")
        records.append({"epoch": h["epoch"], "val": source["val"], "test": source.get("test")})
    return records
