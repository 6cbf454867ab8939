"""The results.json record of a run (see README 'Results')."""

from __future__ import annotations

from soft_dist.config import Config
from soft_dist.noise.table import NoiseTable
from soft_dist.train.protocols import choose_branch


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
        "chosen_branch": chosen,
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
