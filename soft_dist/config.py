"""Typed run configuration: dataclasses, YAML loading, dotted overrides and validation.

A run is described by one YAML file (see configs/) plus ``key=value`` overrides from the command line,
e.g. ``method.tau=0.125 train.epochs=3``. Every key is checked against the dataclasses below: an unknown
key or an out-of-range value raises :class:`ConfigError` naming the dotted field and the file it came from.
The resolved config is written beside every run's output with :func:`save_config`.

Config files may ``include`` another file (path relative to the including file); the included values are
the base and the including file's values win.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

# Method presets (paper Table 1 and Table 3). Each names how the student is supervised:
#   teacher  - an EMA teacher exists and feeds the consistency loss
#   target   - how the consistency target is made from logits: none | softmax | sls | lsr_star
#   sls_on   - which branch's logits are smoothed when target == "sls": teacher | student | both
#   head     - the uncertainty head (weighted CE) is used after the first stage
#   ce_target- the classification target: onehot | lsr (Eq. 1-2 on the given label)
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "ce": dict(teacher=False, target="none", sls_on="teacher", head=False, ce_target="onehot"),
    "mt": dict(teacher=True, target="softmax", sls_on="teacher", head=False, ce_target="onehot"),
    "mt_sls": dict(teacher=True, target="sls", sls_on="teacher", head=False, ce_target="onehot"),
    "soft": dict(teacher=True, target="sls", sls_on="teacher", head=True, ce_target="onehot"),
    # Table 3 (all with the uncertainty module): first row, smoothing variants and SLS targets.
    "mt_unc": dict(teacher=True, target="softmax", sls_on="teacher", head=True, ce_target="onehot"),
    "lsr": dict(teacher=True, target="softmax", sls_on="teacher", head=True, ce_target="lsr"),
    "lsr_star": dict(teacher=True, target="lsr_star", sls_on="teacher", head=True, ce_target="onehot"),
    "sls0": dict(teacher=True, target="sls", sls_on="teacher", head=True, ce_target="onehot", epsilon=0.0),
    "sls_student": dict(teacher=True, target="sls", sls_on="student", head=True, ce_target="onehot"),
    "sls_both": dict(teacher=True, target="sls", sls_on="both", head=True, ce_target="onehot"),
    # Table 1 row "SLS" on a vanilla network: the student's own detached logits, smoothed, as target.
    "sls_self": dict(teacher=False, target="sls", sls_on="student", head=False, ce_target="onehot"),
}


class ConfigError(ValueError):
    """A configuration problem, naming the dotted field and (when known) the file."""

    def __init__(self, field_path: str, message: str, source: str | None = None):
        where = f" (in {source})" if source else ""
        super().__init__(f"config field '{field_path}'{where}: {message}")
        self.field_path = field_path
        self.source = source


def _choice(*options: str) -> dict:
    return {"choices": options}


def _range(lo: float | None = None, hi: float | None = None, lo_open=False, hi_open=False) -> dict:
    return {"range": (lo, hi, lo_open, hi_open)}


@dataclass
class AugmentConfig:
    """Training-view augmentation (both views draw their own random parameters)."""

    scale_min: float = field(default=0.8, metadata=_range(0.0, 1.0, lo_open=True))
    scale_max: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    ratio_min: float = field(default=0.9, metadata=_range(0.0, None, lo_open=True))
    ratio_max: float = field(default=1.1, metadata=_range(0.0, None, lo_open=True))
    flip: bool = True
    rotate_degrees: float = field(default=10.0, metadata=_range(0.0, 180.0))
    # nearest is torchvision RandomRotation's default; linear is smoother but DALI's CPU warp costs about
    # 4x more with it (docs/pipelines.md). Both loaders follow this key.
    rotate_interpolation: str = field(default="nearest", metadata=_choice("nearest", "linear"))
    color_jitter: float = field(default=0.0, metadata=_range(0.0, 1.0))  # the paper uses none
    erasing_prob: float = field(default=0.25, metadata=_range(0.0, 1.0))
    erasing_scale_min: float = field(default=0.02, metadata=_range(0.0, 1.0))
    erasing_scale_max: float = field(default=0.25, metadata=_range(0.0, 1.0))


@dataclass
class DataConfig:
    """Where the images come from and how they are fed."""

    shards: str | None = None  # folder with manifest.json written by `soft-dist shard`
    # Node-local cache for shards given as a URL (s3://...); None: $SOFT_DIST_CACHE, else
    # ~/.cache/soft-dist/shards.
    cache_dir: str | None = None
    # Bound of that cache in GB; least recently used other shard sets are evicted to stay under it.
    cache_max_gb: float = field(default=50.0, metadata=_range(0.0, None, lo_open=True))
    image_size: int = field(default=224, metadata=_range(8, 1024))
    loader: str = field(default="dali", metadata=_choice("dali", "torch"))
    num_threads: int = field(default=2, metadata=_range(1, 256))
    val_labels: str = field(default="noisy", metadata=_choice("noisy", "clean"))
    train_split: str = "train"
    val_split: str = "val"
    test_split: str | None = "test"
    # Splits carved by the run from the shards' samples (soft_dist.data.splits): folds = K >= 2 pools
    # train, val and test and makes fold ``fold`` of K stratified folds the test split; 0 keeps the
    # shards' test split.
    folds: int = field(default=0, metadata=_range(0, 1000))
    fold: int = field(default=0, metadata=_range(0, None))
    # Share of every class's non-test samples carved as the validation split; None keeps the shards'
    # validation split (with folds: 0.1).
    val_fraction: float | None = field(default=None, metadata=_range(0.0, 1.0, lo_open=True, hi_open=True))
    split_seed: int = 0  # seed of the carve (folds and validation)
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # Evaluation view: resize the shorter side to image_size / eval_crop_fraction, then centre crop
    # image_size. 1.0 keeps the whole (already aligned) face; 0.875 is the ImageNet 256 -> 224 habit.
    eval_crop_fraction: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    name: str = field(default="resnet18", metadata=_choice("resnet18", "resnet34", "resnet50"))
    # Small-input stem (3x3 conv, stride 1, no max-pool). None: on when data.image_size <= 64.
    small_stem: bool | None = None
    # None, a local state_dict file, or "imagenet" (torchvision weights; needs network access).
    pretrained: str | None = None
    channels_last: bool = True  # applied on GPU only


@dataclass
class MethodConfig:
    """The SOFT method and its ablations (paper Sec. 3, Tables 1 and 3)."""

    name: str = field(default="soft", metadata=_choice(*METHOD_PRESETS))
    tau: float = field(default=0.125, metadata=_range(0.0, 1.0, lo_open=True, hi_open=True))
    epsilon: float = field(default=0.3, metadata=_range(0.0, 1.0, hi_open=True))
    lambda_: float = field(default=10.0, metadata={**_range(0.0, None), "key": "lambda"})
    rampup_epochs: float = field(default=5.0, metadata=_range(0.0, None))
    ema_decay: float = field(default=0.999, metadata=_range(0.0, 1.0))
    ema_warmup: bool = True  # w_t = min(1 - 1/(t+1), w)
    teacher_buffers: str = field(default="own", metadata=_choice("own", "copy", "ema"))
    # Stage 1 (paper 4.2): epochs trained without the uncertainty head before it is switched on.
    stage1_epochs: int = field(default=6, metadata=_range(0, None))
    # Epochs an SLS method trains as a plain mean teacher (the teacher's softmax as the consistency
    # target) before SLS targets start: the paper applies SLS to an already trained teacher.
    sls_start_epoch: int = field(default=0, metadata=_range(0, None))


@dataclass
class NoiseConfig:
    kind: str = field(default="none", metadata=_choice("none", "symmetric", "asymmetric", "file"))
    rate: float = field(default=0.0, metadata=_range(0.0, 1.0, hi_open=True))
    seed: int = 0
    # Asymmetric noise: {source class name or index: target class name or index}; None uses the
    # dataset's default map from its manifest, or a confusion matrix given in confusion_file.
    class_map: dict | None = None
    confusion_file: str | None = None
    file: str | None = None  # kind=file: a noise table (.csv) or a published noise list (see file_format)
    # How noise.file is read: table (soft-dist's noise_table.csv) or a list, rafdb | soft | paths (docs/experiments.md).
    file_format: str = field(default="table", metadata=_choice("table", "rafdb", "soft", "paths"))


@dataclass
class OptimConfig:
    name: str = field(default="adam", metadata=_choice("adam", "adamw", "sgd"))
    lr: float = field(default=1e-4, metadata=_range(0.0, None, lo_open=True))
    weight_decay: float = field(default=0.0, metadata=_range(0.0, None))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))


@dataclass
class TrainConfig:
    epochs: int = field(default=86, metadata=_range(1, None))
    batch_size: int = field(default=64, metadata=_range(1, None))
    eval_batch_size: int = field(default=256, metadata=_range(1, None))
    seed: int = 0
    workers: int = field(default=2, metadata=_range(1, None))
    use_gpu: bool = False
    cpus_per_worker: int = field(default=1, metadata=_range(1, None))
    torch_threads: int | None = None  # intra-op threads per worker; None leaves torch's default
    bf16: bool = True  # autocast on GPU only
    compile: bool = False
    max_failures: int = field(default=2, metadata=_range(-1, None))
    # Elastic training: with min_workers set, Ray Train runs with any count in [min_workers, workers]
    # (fewer after a node is lost, more again when it returns); None keeps exactly ``workers``.
    min_workers: int | None = field(default=None, metadata=_range(1, None))
    # How often (s) Ray Train looks for room to grow an elastic run back towards ``workers``.
    elastic_resize_interval_s: float = field(default=60.0, metadata=_range(0.0, None))
    # Keep the resumable state (checkpoints/) after the last epoch; false leaves only model.pt and logs.
    keep_state: bool = True
    # Teacher synchronisation across ranks (see soft_dist.train.ray_trainer).
    teacher_buffer_sync_every: int = field(default=1, metadata=_range(0, None))
    sync_check_every: int = field(default=50, metadata=_range(0, None))
    sync_batchnorm: bool = False
    # The branch used for inference is chosen on the validation split by this metric.
    select_metric: str = field(default="accuracy", metadata=_choice("accuracy", "mean_class_accuracy"))
    # Test hook: rank 0's process exits at this global step (once per run directory), to exercise recovery.
    fail_at_step: int | None = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def preset(self) -> dict[str, Any]:
        """The behaviour switches of ``method.name`` (see METHOD_PRESETS)."""
        return METHOD_PRESETS[self.method.name]


# ----------------------------------------------------------------------------- dict <-> dataclass


def _yaml_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain nested dict with YAML key names (``lambda``, not ``lambda_``)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[_yaml_key(f)] = to_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def _coerce(value: Any, hint: Any, path: str, source: str | None) -> Any:
    """Check ``value`` against a type hint (int, float, bool, str, list, dict, X | None)."""
    args = get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    origin = get_origin(hint) or hint
    if origin is bool:
        if isinstance(value, bool):
            return value
    elif origin is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif origin is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ConfigError(path, f"must be finite, got {value!r}", source)
            return float(value)
    elif origin is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    else:  # pragma: no cover - a new field type was added without support here
        raise TypeError(f"unsupported config type {hint} for {path}")
    name = getattr(origin, "__name__", str(origin))
    raise ConfigError(path, f"expected {name}, got {type(value).__name__} {value!r}", source)


def _check_range(value: Any, meta: dict, path: str, source: str | None) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(path, f"must be one of {list(meta['choices'])}, got {value!r}", source)
    if "range" in meta:
        lo, hi, lo_open, hi_open = meta["range"]
        bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
            hi is not None and (value >= hi if hi_open else value > hi)
        )
        if bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            lo_s = "-inf" if lo is None else lo
            hi_s = "inf" if hi is None else hi
            raise ConfigError(path, f"must be in {left}{lo_s}, {hi_s}{right}, got {value!r}", source)


# Fields that did nothing and were removed: the config.yaml of a run made before still loads (for
# --resume), the key is ignored.
REMOVED_KEYS = frozenset({"train.log_every"})


def _build(cls: type, data: dict, prefix: str, sources: dict[str, str]) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ConfigError."""
    hints = get_type_hints(cls)
    by_key = {_yaml_key(f): f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in by_key and f"{prefix}{key}" not in REMOVED_KEYS:
            path = f"{prefix}{key}"
            raise ConfigError(path, f"unknown key; known keys here: {sorted(by_key)}", sources.get(path))
    kwargs = {}
    for key, f in by_key.items():
        if key not in data:
            continue
        path = f"{prefix}{key}"
        source = sources.get(path)
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            sub = data[key]
            if not isinstance(sub, dict):
                raise ConfigError(path, f"expected a mapping, got {sub!r}", source)
            kwargs[f.name] = _build(hint, sub, f"{path}.", sources)
        else:
            value = _coerce(data[key], hint, path, source)
            _check_range(value, f.metadata, path, source)
            kwargs[f.name] = value
    return cls(**kwargs)


def _cross_checks(cfg: Config, sources: dict[str, str]) -> None:
    a = cfg.data.augment
    if a.scale_min > a.scale_max:
        raise ConfigError("data.augment.scale_min", "must be <= scale_max", sources.get("data.augment.scale_min"))
    if a.erasing_scale_min > a.erasing_scale_max:
        raise ConfigError(
            "data.augment.erasing_scale_min", "must be <= erasing_scale_max", sources.get("data.augment.erasing_scale_min")
        )
    if len(cfg.data.mean) != 3 or len(cfg.data.std) != 3:
        raise ConfigError("data.mean", "mean and std need 3 values (RGB)", sources.get("data.mean"))
    if cfg.train.min_workers is not None and cfg.train.min_workers > cfg.train.workers:
        raise ConfigError("train.min_workers", f"must be <= train.workers ({cfg.train.workers})",
                          sources.get("train.min_workers"))
    if cfg.data.folds == 1:
        raise ConfigError("data.folds", "must be 0 (the shards' splits) or at least 2", sources.get("data.folds"))
    if cfg.data.fold >= max(cfg.data.folds, 1):
        raise ConfigError("data.fold", f"must be < data.folds ({cfg.data.folds})", sources.get("data.fold"))
    if cfg.noise.kind == "file" and not cfg.noise.file:
        raise ConfigError("noise.file", "noise.kind=file needs noise.file", sources.get("noise.kind"))


# ----------------------------------------------------------------------------- loading


def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "class_map":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _record_sources(data: dict, source: str, sources: dict[str, str], prefix: str = "") -> None:
    for key, value in data.items():
        path = f"{prefix}{key}"
        sources[path] = source
        if isinstance(value, dict) and key != "class_map":
            _record_sources(value, source, sources, f"{path}.")


def _read_yaml(path: Path, sources: dict[str, str], seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError("include", f"include cycle through {path}", str(path))
    if not path.is_file():
        raise ConfigError("include" if seen else "config", f"file not found: {path}", str(seen[-1]) if seen else None)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError("(file)", f"not valid YAML: {err}", str(path)) from err
    if not isinstance(data, dict):
        raise ConfigError("(file)", "the top level must be a mapping", str(path))
    merged: dict = {}
    include = data.pop("include", None)
    if include is not None:
        merged = _read_yaml(path.parent / str(include), sources, (*seen, path))
    _record_sources(data, str(path), sources)
    return _deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"method.tau=0.125"`` -> (["method", "tau"], 0.125); values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(key, "empty key segment in override")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str], sources: dict[str, str]) -> dict:
    out = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(".".join(parts), f"'{part}' is not a section", "command line")
        node[parts[-1]] = value
        sources[".".join(parts)] = "command line"
    return out


def from_dict(data: dict, sources: dict[str, str] | None = None) -> Config:
    sources = sources or {}
    cfg = _build(Config, data, "", sources)
    _cross_checks(cfg, sources)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (or the defaults when None), apply dotted overrides, validate, return a Config."""
    sources: dict[str, str] = {}
    data = _read_yaml(Path(path), sources) if path else {}
    data = apply_overrides(data, list(overrides or []), sources)
    return from_dict(data, sources)


def config_yaml(cfg: Config) -> str:
    """The fully resolved config (every field, defaults included) as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_from_yaml(text: str, source: str, overrides: list[str] | None = None) -> Config:
    """A config from YAML text that was read elsewhere (e.g. a run's config.yaml in object storage),
    plus dotted overrides; errors name ``source``. No ``include`` here: saved configs are resolved."""
    sources: dict[str, str] = {}
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError("(file)", f"not valid YAML: {err}", source) from err
    if not isinstance(data, dict):
        raise ConfigError("(file)", "the top level must be a mapping", source)
    _record_sources(data, source, sources)
    return from_dict(apply_overrides(data, list(overrides or []), sources), sources)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the fully resolved config as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_yaml(cfg))
    return path
