"""What a sweep leaves behind: trials.csv (one row per trial), best.yaml (a training config ready for
`soft-dist train --config`), parameter importances, and the plots (soft_dist.tune.sweep_plots)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import yaml

from soft_dist.config import to_dict
from soft_dist.tune.layout import STARTS_FILE, TRIALS_DIR, TUNE_RUN_NAME
from soft_dist.tune.search import optuna_distributions
from soft_dist.tune.sweep_config import REPORTED_METRICS, Sweep, apply_params

FINISHED = ("TERMINATED", "ERROR")


def trials_table(sweep: Sweep, run_dir: Path) -> pd.DataFrame:
    """One row per trial, from Tune's experiment state under DIR/tune.

    Columns: trial (1 = the first point evaluated), trial_id, the searched parameters by short name (tau, epsilon, lambda, ...), the reported
    metrics at the trial's last epoch, epochs (trained), status, stopped_early (ASHA stopped it before
    train.epochs), starts (how often the trial's driver started: 1 unless it was resumed), trial_dir."""
    from ray.tune import ExperimentAnalysis

    from soft_dist.tune.console import trial_number

    analysis = ExperimentAnalysis(str(run_dir / TUNE_RUN_NAME))
    rows = []
    for trial in analysis.trials:
        last = trial.last_result or {}
        epochs = int(last.get("epoch", 0))
        trial_dir = run_dir / TRIALS_DIR / trial.trial_id
        starts_file = trial_dir / STARTS_FILE
        row = {"trial": trial_number(trial), "trial_id": trial.trial_id}
        row.update({d.name: trial.config.get(d.name) for d in sweep.space})
        row.update({m: last.get(m, math.nan) for m in REPORTED_METRICS})
        row.update({
            "epochs": epochs,
            "status": trial.status,
            "stopped_early": trial.status == "TERMINATED" and 0 < epochs < sweep.epochs,
            "starts": len(starts_file.read_text().splitlines()) if starts_file.is_file() else 0,
            "trial_dir": str(trial_dir),
        })
        rows.append(row)
    columns = ["trial", "trial_id", *[d.name for d in sweep.space], *REPORTED_METRICS, "epochs", "status",
               "stopped_early", "starts", "trial_dir"]
    return pd.DataFrame(rows, columns=columns).sort_values("trial").reset_index(drop=True)


def best_row(sweep: Sweep, table: pd.DataFrame) -> pd.Series | None:
    """The best trial by the metric at its last epoch. Trials that trained every epoch come first: an
    ASHA-stopped trial's metric is from an earlier epoch and would not compare fairly."""
    scored = table[(table["status"] == "TERMINATED") & table[sweep.metric].notna()]
    complete = scored[scored["epochs"] >= sweep.epochs]
    pool = complete if len(complete) else scored
    if not len(pool):
        return None
    index = pool[sweep.metric].idxmax() if sweep.mode == "max" else pool[sweep.metric].idxmin()
    return table.loc[index]


def write_best_config(sweep: Sweep, row: pd.Series, path: Path) -> Path:
    """The base training config with the best trial's parameters, as a `soft-dist train --config` file."""
    params = {d.key: _plain(row[d.name]) for d in sweep.space}
    cfg = apply_params(sweep.base, params)
    header = (f"# Best trial {row['trial_id']} of the sweep in {path.parent}: {sweep.metric} = {row[sweep.metric]:.4f}"
              f" after {row['epochs']} epochs.\n# Searched: "
              + ", ".join(f"{k} = {v}" for k, v in params.items()) + "\n")
    path.write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def _plain(value):
    """numpy scalars -> Python scalars (YAML and the config's type checks want plain types)."""
    return value.item() if hasattr(value, "item") else value


def param_importances(sweep: Sweep, table: pd.DataFrame) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA, seeded) over the trials that reported the metric.

    Computed from trials.csv in a fresh in-memory study, so it works the same after --resume and with
    or without optuna_storage. Empty when there are fewer than two such trials or nothing varies."""
    import optuna


    scored = table[table[sweep.metric].notna()]
    if len(scored) < 2:
        return {}
    distributions = optuna_distributions(sweep)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line for this scratch study
    study = optuna.create_study(direction="maximize" if sweep.mode == "max" else "minimize")
    for _, row in scored.iterrows():
        study.add_trial(optuna.trial.create_trial(
            params={d.name: _plain(row[d.name]) for d in sweep.space}, distributions=distributions,
            value=float(row[sweep.metric])))
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=sweep.seed)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError, ZeroDivisionError):  # e.g. all values equal
        return {}


def write_outputs(sweep: Sweep, run_dir: Path) -> dict:
    """trials.csv always; best.yaml and the PNG plots once every trial has ended. Returns a summary."""
    from soft_dist.tune.sweep_plots import plot_importances, plot_metric_vs_params

    table = trials_table(sweep, run_dir)
    table.to_csv(run_dir / "trials.csv", index=False)
    finished = int(table["status"].isin(FINISHED).sum())
    summary = {
        "run_dir": str(run_dir), "trials": len(table), "finished": finished,
        "complete": finished == len(table) and len(table) >= sweep.num_samples,
        "stopped_early": int(table["stopped_early"].sum()), "errors": int((table["status"] == "ERROR").sum()),
        "best": None, "files": [str(run_dir / "trials.csv")],
    }
    if not summary["complete"]:
        return summary
    row = best_row(sweep, table)
    if row is not None:
        summary["best"] = {"trial_id": row["trial_id"], sweep.metric: float(row[sweep.metric]),
                           **{d.name: _plain(row[d.name]) for d in sweep.space}}
        summary["files"].append(str(write_best_config(sweep, row, run_dir / "best.yaml")))
    best_id = row["trial_id"] if row is not None else None
    summary["files"] += [str(p) for p in plot_metric_vs_params(sweep, table, run_dir, best_id)]
    summary["importances"] = param_importances(sweep, table)
    summary["files"].append(str(plot_importances(summary["importances"], run_dir / "param_importances.png",
                                                 sweep.metric)))
    return summary
