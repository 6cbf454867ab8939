"""Typed sweep file for `soft-dist tune`: the base training config, the search space, the metric and
how the search runs. Everything is checked before any trial starts.

A sweep file (see configs/sweeps/) looks like::

    base: ../digits_cpu.yaml          # training config, relative to this file (omitted: built-in defaults)
    overrides: {train.epochs: 2}      # dotted overrides applied to the base config
    space:                            # dotted training-config key -> distribution (omitted: DEFAULT_SPACE)
      method.tau_relative: {type: uniform, low: 0.35, high: 1.4}   # tau = tau_relative / C
      method.lambda: {type: loguniform, low: 0.1, high: 30}
      optim.name: {type: choice, values: [adam, sgd]}
      method.stage1_epochs: {type: int, low: 0, high: 6}
    metric: val_accuracy              # or val_mean_class_accuracy (of the branch validation chooses)
    mode: max
    num_samples: 20                   # trials
    max_concurrent: 2                 # trials at once
    scheduler: {type: asha, grace_period: 2, reduction_factor: 2}   # or {type: none}
    seed: 0
    resources: {workers: 1, cpus_per_worker: 1, use_gpu: false}    # per trial (Ray Train workers)
    optuna_storage: optuna.db         # optional: SQLite file (relative to the run dir) or database URL

Every key but ``space`` has its default in :class:`Sweep` (and :class:`SchedulerSpec`); the default space
is the ``space`` of the bundled default sweep (:data:`SPACE_HOME`). Errors are
:class:`soft_dist.config.ConfigError` naming the sweep field and the sweep file.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from soft_dist.config import (BUNDLED_CONFIGS, Config, ConfigError, bundled_names, from_dict, load_config,
                              locate_config, to_dict, unknown_key_message)

# The flat keys the training worker reports every epoch (soft_dist.train.ray_trainer.worker_loop).
REPORTED_METRICS = ("val_accuracy", "val_mean_class_accuracy")
# Added to each report by the sweep's callback (soft_dist.tune.sweep): the worker's `epoch` (counted from
# 1), i.e. epochs trained so far. ASHA counts this, not Tune's training_iteration, because a trial
# restarted on --resume continues from its own checkpoint (Ray Train restores it from the trial's run dir)
# while Tune's iteration counter restarts.
EPOCHS_KEY = "epochs_done"
SPACE_TYPES = ("uniform", "loguniform", "int", "choice")
SCHEDULERS = ("asha", "none")
TOP_KEYS = ("base", "overrides", "space", "points_to_evaluate", "metric", "mode", "num_samples",
            "max_concurrent", "scheduler", "seed", "resources", "optuna_storage", "study_name")

# The file that declares the default search space (the issue's: the three hyper-parameters the paper's
# Fig. 3 shows sharp peaks for) as its `space`; a sweep file without `space` searches DEFAULT_SPACE.
SPACE_HOME = BUNDLED_CONFIGS / "sweeps" / "default.yaml"


@dataclass(frozen=True)
class Dimension:
    """One searched training-config key (``key`` is dotted, with YAML names: ``method.lambda``)."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple = ()
    name: str = ""  # short column / Optuna parameter name, e.g. ``tau``

    def contains(self, value: Any) -> bool:
        if self.type == "choice":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high

    def extremes(self) -> list:
        """Values that must all make a valid training config."""
        return list(self.values) if self.type == "choice" else [self.low, self.high]


@dataclass
class SchedulerSpec:
    type: str = "asha"
    grace_period: int = 1  # epochs every trial runs before ASHA may stop it
    reduction_factor: float = 2.0


@dataclass
class Sweep:
    """A validated sweep. ``base`` is the resolved training config every trial starts from."""

    source: str
    base: Config
    space: list[Dimension]
    points_to_evaluate: list[dict[str, Any]]  # keyed by dotted key
    metric: str = "val_accuracy"
    mode: str = "max"
    num_samples: int = 20
    max_concurrent: int = 2
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    seed: int = 0
    optuna_storage: str | None = None
    study_name: str | None = None

    @property
    def epochs(self) -> int:
        return self.base.train.epochs

    def by_name(self) -> dict[str, Dimension]:
        return {d.name: d for d in self.space}

    def to_dict(self) -> dict:
        """The sweep as a file whose base config sits beside it as ``base_config.yaml`` (for --resume)."""
        return {
            "base": "base_config.yaml",
            "space": {d.key: _dimension_dict(d) for d in self.space},
            "points_to_evaluate": copy.deepcopy(self.points_to_evaluate),
            "metric": self.metric, "mode": self.mode, "num_samples": self.num_samples,
            "max_concurrent": self.max_concurrent,
            "scheduler": {"type": self.scheduler.type, "grace_period": self.scheduler.grace_period,
                          "reduction_factor": self.scheduler.reduction_factor},
            "seed": self.seed, "optuna_storage": self.optuna_storage, "study_name": self.study_name,
        }


def _dimension_dict(d: Dimension) -> dict:
    if d.type == "choice":
        return {"type": "choice", "values": list(d.values)}
    return {"type": d.type, "low": d.low, "high": d.high}


# ----------------------------------------------------------------------------- helpers


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict (sections are created as needed)."""
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def get_dotted(data: dict, key: str) -> Any:
    node = data
    for part in key.split("."):
        node = node[part]
    return node


def apply_params(base: Config, params: dict[str, Any]) -> Config:
    """``base`` with ``{dotted key: value}`` set and re-validated."""
    data = to_dict(base)
    for key, value in params.items():
        set_dotted(data, key, value)
    return from_dict(data)


def short_names(keys: list[str]) -> dict[str, str]:
    """Dotted key -> its last segment (``method.tau`` -> ``tau``), or the whole key when two searched
    keys share a last segment."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _number(value: Any, path: str, source: str, integer: bool = False) -> float | int:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(float(value)):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(path, f"must be {kind}, got {value!r}", source)
    return value if integer else float(value)


def _mapping(value: Any, path: str, source: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a mapping, got {value!r}", source)
    return value


def _only_keys(data: dict, allowed: tuple[str, ...], prefix: str, source: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}", unknown_key_message(key, allowed, prefix), source)


def read_sweep_file(path: Path) -> dict:
    """The mapping in sweep file ``path``; errors name the file."""
    source = str(path)
    if not path.is_file():
        raise ConfigError("--config", f"sweep file not found: {path} (bundled sweeps: {', '.join(bundled_names('sweeps'))})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError("(file)", f"not valid YAML: {err}", source) from err
    return _mapping(data, "(file)", source)


DEFAULT_SPACE: dict = _mapping(read_sweep_file(SPACE_HOME).get("space"), "space", str(SPACE_HOME))


# ----------------------------------------------------------------------------- parsing


def _parse_dimension(key: str, spec: Any, source: str) -> Dimension:
    path = f"space.{key}"
    spec = _mapping(spec, path, source)
    kind = spec.get("type")
    if kind not in SPACE_TYPES:
        raise ConfigError(f"{path}.type", f"must be one of {list(SPACE_TYPES)}, got {kind!r}", source)
    if kind == "choice":
        _only_keys(spec, ("type", "values"), f"{path}.", source)
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}.values", "a choice needs a non-empty list of values", source)
        return Dimension(key, kind, values=tuple(values))
    _only_keys(spec, ("type", "low", "high"), f"{path}.", source)
    for bound in ("low", "high"):
        if bound not in spec:
            raise ConfigError(f"{path}.{bound}", f"a {kind} range needs low and high", source)
    low = _number(spec["low"], f"{path}.low", source, integer=kind == "int")
    high = _number(spec["high"], f"{path}.high", source, integer=kind == "int")
    if low >= high:
        raise ConfigError(f"{path}.low", f"empty range: low ({low}) must be < high ({high})", source)
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{path}.low", f"loguniform needs low > 0, got {low}", source)
    return Dimension(key, kind, low=low, high=high)


def _check_against_config(dim: Dimension, base: Config, source: str) -> None:
    """Every searched key must be a training-config field, and its range ends (or choices) must pass
    the config's own validation, so no trial can fail on a bad value."""
    data = to_dict(base)
    try:
        current = get_dotted(data, dim.key)
    except (KeyError, TypeError):
        raise ConfigError(f"space.{dim.key}", "not a key of the training config (see README, Configuration)",
                          source) from None
    if isinstance(current, dict):
        raise ConfigError(f"space.{dim.key}", "is a config section, not a value", source)
    if dim.key == "method.tau_relative" and base.method.tau is not None:
        # A given method.tau wins over tau_relative: every trial would train the same tau.
        raise ConfigError(f"space.{dim.key}", f"the base config sets method.tau={base.method.tau:g}, which wins "
                          "over tau_relative; drop it from the base (or search method.tau instead)", source)
    for value in dim.extremes():
        trial = copy.deepcopy(data)
        set_dotted(trial, dim.key, value)
        try:
            from_dict(trial)
        except ConfigError as err:
            raise ConfigError(f"space.{dim.key}", f"the value {value!r} is not a valid training config: {err}",
                              source) from None


def _parse_points(raw: Any, space: list[Dimension], source: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise ConfigError("points_to_evaluate", f"expected a list of mappings, got {raw!r}", source)
    keys = {d.key: d for d in space}
    points = []
    for i, point in enumerate(raw):
        point = _mapping(point, f"points_to_evaluate[{i}]", source)
        if set(point) != set(keys):
            raise ConfigError(f"points_to_evaluate[{i}]", f"needs exactly the searched keys {sorted(keys)}, "
                              f"got {sorted(point)}", source)
        for key, value in point.items():
            if not keys[key].contains(value):
                raise ConfigError(f"points_to_evaluate[{i}].{key}", f"{value!r} is outside the searched range",
                                  source)
        points.append(dict(point))
    return points


def _default_points(space: list[Dimension], base: Config) -> list[dict[str, Any]]:
    """The base training config's values of the searched keys as the first point (the built-in defaults
    where the base keeps them, with tau_relative resolved by model.pretrained), when each lies in its range."""
    defaults = to_dict(base)
    point = {}
    for d in space:
        try:
            value = get_dotted(defaults, d.key)
        except (KeyError, TypeError):
            return []
        if not d.contains(value):
            return []
        point[d.key] = value
    return [point]


def parse_sweep(data: dict, source: str, base_path: Path | None, extra_overrides: list[str] | None = None) -> Sweep:
    """Validate a sweep mapping read from ``source``; ``base_path`` is the resolved base config file
    (None: the built-in defaults)."""
    _only_keys(data, TOP_KEYS, "", source)
    overrides = _mapping(data.get("overrides") or {}, "overrides", source)
    # JSON is valid YAML, so each value survives the override parser unchanged.
    texts = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    resources = _mapping(data.get("resources") or {}, "resources", source)
    _only_keys(resources, ("workers", "cpus_per_worker", "use_gpu"), "resources.", source)
    # Resources are training keys; the sweep file's values win over the base config, the command line
    # wins over both.
    texts += [f"train.{k}={json.dumps(v)}" for k, v in resources.items()]
    base = load_config(base_path, [*texts, *(extra_overrides or [])])

    space_raw = data.get("space")
    space_raw = DEFAULT_SPACE if space_raw is None else _mapping(space_raw, "space", source)
    if not space_raw:
        raise ConfigError("space", "the search space is empty", source)
    dims = [_parse_dimension(str(k), v, source) for k, v in space_raw.items()]
    for d in dims:
        _check_against_config(d, base, source)
    names = short_names([d.key for d in dims])
    dims = [Dimension(d.key, d.type, d.low, d.high, d.values, names[d.key]) for d in dims]

    metric = data.get("metric", Sweep.metric)
    if metric not in REPORTED_METRICS:
        raise ConfigError("metric", f"training reports {list(REPORTED_METRICS)} per epoch, got {metric!r}", source)
    mode = data.get("mode", Sweep.mode)
    if mode not in ("max", "min"):
        raise ConfigError("mode", f"must be max or min, got {mode!r}", source)

    sched = _mapping(data.get("scheduler") or {}, "scheduler", source)
    _only_keys(sched, ("type", "grace_period", "reduction_factor"), "scheduler.", source)
    scheduler = SchedulerSpec(type=sched.get("type", SchedulerSpec.type))
    if scheduler.type not in SCHEDULERS:
        raise ConfigError("scheduler.type", f"must be one of {list(SCHEDULERS)}, got {scheduler.type!r}", source)
    if "grace_period" in sched:
        scheduler.grace_period = _number(sched["grace_period"], "scheduler.grace_period", source, integer=True)
    if not 1 <= scheduler.grace_period <= base.train.epochs:
        raise ConfigError("scheduler.grace_period", f"must be in [1, train.epochs={base.train.epochs}] epochs, "
                          f"got {scheduler.grace_period}", source)
    if "reduction_factor" in sched:
        scheduler.reduction_factor = _number(sched["reduction_factor"], "scheduler.reduction_factor", source)
    if scheduler.reduction_factor <= 1:
        raise ConfigError("scheduler.reduction_factor", f"must be > 1, got {scheduler.reduction_factor}", source)

    ints = {}
    for key in ("num_samples", "max_concurrent", "seed"):
        ints[key] = _number(data.get(key, getattr(Sweep, key)), key, source, integer=True)
    for key in ("num_samples", "max_concurrent"):
        if ints[key] < 1:
            raise ConfigError(key, f"must be >= 1, got {ints[key]}", source)

    points_raw = data.get("points_to_evaluate")
    points = _default_points(dims, base) if points_raw is None else _parse_points(points_raw, dims, source)
    storage = data.get("optuna_storage")
    if storage is not None and (not isinstance(storage, str) or not storage.strip()):
        raise ConfigError("optuna_storage", f"expected a SQLite file or a database URL, got {storage!r}", source)
    study = data.get("study_name")
    if study is not None and not isinstance(study, str):
        raise ConfigError("study_name", f"expected a string, got {study!r}", source)
    return Sweep(source=source, base=base, space=dims, points_to_evaluate=points, metric=metric, mode=mode,
                 scheduler=scheduler, optuna_storage=storage, study_name=study, **ints)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and validate a sweep file; ``overrides`` (``key=value``) apply to the base training config."""
    path = locate_config(path, "sweeps").resolve()  # a bare name: the bundled one of that name
    source = str(path)
    data = read_sweep_file(path)
    base_path = None  # no base: the built-in defaults (the paper's ResNet-18 / 224 px / 86-epoch setup)
    if data.get("base") is not None:
        base_path = path.parent / str(data["base"])
        if not base_path.is_file():
            raise ConfigError("base", f"file not found: {base_path}", source)
    return parse_sweep(data, source, base_path, overrides)
