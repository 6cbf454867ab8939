"""The Optuna side of a sweep: its search space as Optuna distributions, the searcher, its storage."""

from __future__ import annotations

from pathlib import Path

from soft_dist.tune.sweep_config import Sweep


def optuna_distributions(sweep: Sweep) -> dict:
    """Short parameter name -> Optuna distribution (Optuna samples, the trial gets ``{name: value}``)."""
    import optuna

    space = {}
    for d in sweep.space:
        if d.type == "choice":
            space[d.name] = optuna.distributions.CategoricalDistribution(list(d.values))
        elif d.type == "int":
            space[d.name] = optuna.distributions.IntDistribution(int(d.low), int(d.high))
        else:
            space[d.name] = optuna.distributions.FloatDistribution(d.low, d.high, log=d.type == "loguniform")
    return space


def optuna_search(sweep: Sweep, run_dir: Path):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "A new study created" line is not for the console
    names = {d.key: d.name for d in sweep.space}
    points = [{names[k]: v for k, v in p.items()} for p in sweep.points_to_evaluate]
    storage = optuna_storage(sweep, run_dir)
    return OptunaSearch(
        space=optuna_distributions(sweep),
        metric=sweep.metric, mode=sweep.mode,  # a searcher built with its space ignores TuneConfig's
        points_to_evaluate=points or None,  # enqueued in the study: the first trial(s), before TPE samples
        seed=sweep.seed,  # seeds the TPE sampler
        storage=optuna.storages.RDBStorage(storage) if storage else None,
        study_name=sweep.study_name or run_dir.name,
    )


def optuna_storage(sweep: Sweep, run_dir: Path) -> str | None:
    """The Optuna storage URL: a database URL as given, or a SQLite file (relative to the run dir)."""
    value = sweep.optuna_storage
    if not value:
        return None
    if "://" in value:
        return value
    path = Path(value)
    return f"sqlite:///{(path if path.is_absolute() else run_dir / path).resolve()}"
