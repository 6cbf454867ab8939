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
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, get_args, get_origin, get_type_hints

import yaml

from soft_dist.method.presets import LOW_MASS_RULES, METHOD_PRESETS, MethodPreset
from soft_dist.url_secrets import credentials_problem

class ConfigError(ValueError):
    """A configuration problem, naming the dotted field and (when known) the file."""

    def __init__(self, field_path: str, message: str, source: str | None = None):
        where = f" (in {source})" if source else ""
        what = "option" if field_path.startswith("--") else "config field"  # a command-line flag, or a key
        super().__init__(f"{what} '{field_path}'{where}: {message}")
        self.field_path = field_path
        self.source = source
        self.message = message  # without the field and file, for callers that name them their own way


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, choices: tuple | None = None,
            lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
            key: str | None = None, factory: Callable[[], Any] | None = None, extra: dict | None = None,
            length: int | None = None, resumable: bool = False) -> Any:
    """Declare one config field: its default, a one-line meaning (``doc``, shown by `soft-dist config docs`),
    the allowed values (``choices``) or range (``lo``/``hi``, open ends with ``lo_open``/``hi_open``), and
    the YAML key when it differs from the attribute (``lambda``), and ``extra`` metadata for one user's
    needs (the shard options' help groups). For a list field (``list[float]``) the range applies to every
    element and ``length`` fixes how many there are. ``resumable``: the value may change when a run is
    resumed (it does not change what is learned: epochs, workers, caches). Validation, overrides, sweeps, grids and
    the docs all read this one declaration."""
    if not doc:
        raise TypeError("every config field needs a doc")
    meta: dict[str, Any] = {"doc": doc}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if lo is not None or hi is not None:
        meta["range"] = (lo, hi, lo_open, hi_open)
    if key is not None:
        meta["key"] = key
    if length is not None:
        meta["length"] = length
    if resumable:
        meta["resumable"] = True
    meta.update(extra or {})
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str) -> Any:
    """A nested config section (a dataclass) with its one-line meaning."""
    return field(default_factory=cls, metadata={"doc": doc})


@dataclass
class AugmentConfig:
    """Training-view augmentation (both views draw their own random parameters)."""

    scale_min: float = setting(0.8, "smallest crop area, as a share of the image (random resized crop)",
                               lo=0.0, hi=1.0, lo_open=True)
    scale_max: float = setting(1.0, "largest crop area, as a share of the image", lo=0.0, hi=1.0, lo_open=True)
    ratio_min: float = setting(0.9, "smallest crop aspect ratio (width / height)", lo=0.0, lo_open=True)
    ratio_max: float = setting(1.1, "largest crop aspect ratio (width / height)", lo=0.0, lo_open=True)
    flip: bool = setting(True, "random horizontal flip")
    rotate_degrees: float = setting(10.0, "random rotation in [-d, d] degrees", lo=0.0, hi=180.0)
    # nearest is torchvision RandomRotation's default; linear is smoother but DALI's CPU warp costs about
    # 4x more with it (docs/pipelines.md). Both loaders follow this key.
    rotate_interpolation: str = setting("nearest", "interpolation of the rotation (linear costs ~4x on DALI CPU)",
                                        choices=("nearest", "linear"))
    color_jitter: float = setting(0.0, "brightness/contrast/saturation jitter strength (the paper uses none)",
                                  lo=0.0, hi=1.0)
    erasing_prob: float = setting(0.25, "probability of random erasing per view", lo=0.0, hi=1.0)
    erasing_scale_min: float = setting(0.02, "smallest erased area, as a share of the image", lo=0.0, hi=1.0)
    erasing_scale_max: float = setting(0.25, "largest erased area, as a share of the image", lo=0.0, hi=1.0)


@dataclass
class DataConfig:
    """Where the images come from and how they are fed."""

    shards: str | None = setting(None, "shard folder (or s3:// URL) with manifest.json, written by `soft-dist shard`")
    cache_dir: str | None = setting(None, "node-local cache for shards given as a URL; null: $SOFT_DIST_CACHE, "
                                          "else ~/.cache/soft-dist/shards", resumable=True)
    cache_max_gb: float = setting(50.0, "bound of that cache in GB; least recently used shard sets are evicted",
                                  lo=0.0, lo_open=True, resumable=True)
    image_size: int = setting(224, "side of the square network input in pixels", lo=8, hi=1024)
    loader: str = setting("dali", "input pipeline: DALI (CPU or GPU decoding) or the torch fallback",
                          choices=("dali", "torch"))
    num_threads: int = setting(2, "decoding/augmentation threads per loader", lo=1, hi=256, resumable=True)
    val_labels: str = setting("noisy", "labels validation is scored against: the noisy ones (realistic) or clean",
                              choices=("noisy", "clean"))
    train_split: str = setting("train", "shard split used for training")
    val_split: str = setting("val", "shard split used for validation (model selection)")
    test_split: str | None = setting("test", "shard split used for the test report; null: no test split")
    folds: int = setting(0, "K >= 2 pools the splits and makes fold `data.fold` of K stratified folds the test "
                            "split; 0 keeps the shards' test split", lo=0, hi=1000)
    fold: int = setting(0, "which of the `data.folds` folds is the test split", lo=0)
    val_fraction: float | None = setting(None, "share of every class's non-test samples carved as validation; "
                                               "null keeps the shards' val split (with folds: 0.1)",
                                         lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    split_seed: int = setting(0, "seed of the carve (folds and validation)")
    mean: list[float] = setting(doc="per-channel (RGB) mean for normalisation, of pixels scaled to [0, 1]",
                                factory=lambda: [0.485, 0.456, 0.406], lo=0.0, hi=1.0, length=3)
    std: list[float] = setting(doc="per-channel (RGB) standard deviation for normalisation",
                               factory=lambda: [0.229, 0.224, 0.225], lo=0.0, lo_open=True, length=3)
    eval_crop_fraction: float = setting(1.0, "evaluation view: resize to image_size / f, centre-crop image_size "
                                             "(1.0 keeps the whole aligned face)", lo=0.0, hi=1.0, lo_open=True)
    augment: AugmentConfig = section(AugmentConfig, "training-view augmentation")


@dataclass
class ModelConfig:
    """The network."""

    name: str = setting("resnet18", "backbone (torchvision ResNet)", choices=("resnet18", "resnet34", "resnet50"))
    small_stem: bool | None = setting(None, "3x3 stride-1 stem without max-pool for small inputs; "
                                            "null: on when data.image_size <= 64")
    width: int = setting(64, "channels of the backbone's first stage, doubled at each later stage; 64 is "
                             "torchvision's network (the only width ImageNet weights fit), less trains faster "
                             "and smaller", lo=4)
    pretrained: str | None = setting(None, "null, a local weight file (a state_dict or {'state_dict': ...}; "
                                           "'module.' stripped; loaded strictly), or \"imagenet\" (needs network)")
    channels_last: bool = setting(True, "channels-last memory format (applied on GPU only)", resumable=True)


# method.tau_relative when it is null, by where the weights start. Pretrained: the paper's tau = 1/8 for
# RAF-DB's 7 classes (7/8 of uniform), the regime it was set in. From random weights the teacher's first
# targets are confident noise; half of uniform keeps more classes in them and beat 7/8 on every harder-digits
# setting measured, by +1.1 points pooled over 40 paired folds (docs/experiments.md, "tau at half of uniform").
TAU_RELATIVE_PRETRAINED = 0.875
TAU_RELATIVE_FROM_SCRATCH = 0.5


@dataclass
class MethodConfig:
    """The SOFT method and its ablations (paper Sec. 3, Tables 1 and 3)."""

    name: str = setting("soft", "method preset (soft_dist/method/presets.py, table below)",
                        choices=tuple(METHOD_PRESETS))
    tau: float | None = setting(None, "SLS confidence threshold: classes above it keep their relative confidence "
                                      "(keep it below 1/C); null: method.tau_relative / C, resolved from the "
                                      "shards' class count and saved as the value that ran",
                                lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    # Stated relative to uniform, one default carries over to any class count; an absolute 1/8 lies above
    # uniform from 9 classes on, where SLS targets turn into hard pseudo-labels (docs/experiments.md, "SOFT
    # against MT"). Null picks by where the weights start: see TAU_RELATIVE_PRETRAINED / _FROM_SCRATCH.
    tau_relative: float | None = setting(None, "tau as a share of uniform confidence 1/C, used when method.tau "
                                               f"is null; null: {TAU_RELATIVE_PRETRAINED:g} with model.pretrained (the "
                                               f"paper's 1/8 at 7 classes), {TAU_RELATIVE_FROM_SCRATCH:g} from "
                                               "random weights; resolved when the config is read",
                                         lo=0.0, hi=2.0, lo_open=True, hi_open=True)
    epsilon: float = setting(0.3, "smoothing mass given to the low-confidence classes (SLS, LSR, LSR*); "
                                  "sls0 pins it at 0", lo=0.0, hi=1.0, hi_open=True)
    sls_low_mass: str = setting("total", "how SLS shares epsilon among the classes below tau: total (the paper: "
                                         "epsilon in all, epsilon / (C - k) each) or per_class (epsilon / (C - 1) "
                                         "each, so no rejected class outranks a kept one)",
                                choices=LOW_MASS_RULES)
    lambda_: float = setting(10.0, "weight of the consistency loss after the ramp-up", lo=0.0, key="lambda")
    rampup_epochs: float = setting(5.0, "epochs of the sigmoid ramp-up of the consistency weight", lo=0.0)
    ema_decay: float = setting(0.999, "EMA decay w of the teacher", lo=0.0, hi=1.0)
    ema_warmup: bool = setting(True, "use w_t = min(1 - 1/(t+1), w) so early teachers follow the student faster")
    teacher_buffers: str = setting("own", "teacher BatchNorm buffers: its own batch statistics, a copy of the "
                                          "student's, or their EMA", choices=("own", "copy", "ema"))
    stage1_epochs: int = setting(6, "epochs trained without the uncertainty head before it is switched on "
                                    "(paper 4.2)", lo=0)
    sls_start_epoch: int = setting(0, "epochs an SLS method trains as a plain mean teacher before SLS targets "
                                      "start", lo=0)

    def tau_for(self, num_classes: int) -> float:
        """The tau that runs on ``num_classes`` classes: method.tau if given, else tau_relative / C."""
        if self.tau is not None:
            return self.tau
        if self.tau_relative is None:  # a MethodConfig() built by hand: from_dict resolves it by model.pretrained
            raise ValueError("method.tau_relative is unresolved (null); read the config with load_config / from_dict")
        return self.tau_relative / num_classes


@dataclass
class NoiseConfig:
    """The label noise the run trains with (injected into a noise table; shards keep clean labels)."""

    kind: str = setting("none", "noise injected into the training and validation labels",
                        choices=("none", "symmetric", "asymmetric", "file"))
    rate: float = setting(0.0, "share of labels changed", lo=0.0, hi=1.0, hi_open=True)
    seed: int = setting(0, "seed of the noise draw")
    class_map: dict | None = setting(None, "asymmetric noise: {source class: target class} by name or index; "
                                           "null: the dataset's default map, or confusion_file")
    confusion_file: str | None = setting(None, "asymmetric noise: a C x C confusion matrix (CSV) to derive the "
                                               "class map from")
    file: str | None = setting(None, "kind=file: a noise table (.csv) or a published noise list")
    file_format: str = setting("table", "how noise.file is read: soft-dist's noise_table.csv, or a list "
                                        "(rafdb | soft | paths, docs/experiments.md)",
                               choices=("table", "rafdb", "soft", "paths"))


@dataclass
class OptimConfig:
    """The optimizer (constant learning rate, as in the paper)."""

    name: str = setting("adam", "optimizer (the paper: Adam)", choices=("adam", "adamw", "sgd"))
    lr: float = setting(1e-4, "learning rate (constant, no schedule)", lo=0.0, lo_open=True)
    weight_decay: float = setting(0.0, "weight decay of the optimizer", lo=0.0)
    momentum: float = setting(0.9, "momentum (sgd only)", lo=0.0, hi=1.0)


@dataclass
class TrainConfig:
    """The run: schedule, workers, recovery and teacher synchronisation."""

    epochs: int = setting(86, "epochs to train (the paper: 6 + 80)", lo=1, resumable=True)
    # BatchNorm in training needs two values per channel; at small inputs the last ResNet stage is 1 x 1,
    # so a batch of one fails at the first step (found by the field walk, tests/test_field_walk.py).
    batch_size: int = setting(64, "training batch per worker (at least 2: BatchNorm)", lo=2)
    eval_batch_size: int = setting(256, "evaluation batch per worker", lo=1, resumable=True)
    seed: int = setting(0, "seed of torch, numpy and Python on every rank, and of the data order")
    workers: int = setting(2, "Ray Train workers (DDP ranks)", lo=1, resumable=True)
    use_gpu: bool = setting(False, "one GPU per worker (DALI mixed decoding, NCCL)", resumable=True)
    cpus_per_worker: int = setting(1, "CPUs reserved per worker", lo=1, resumable=True)
    torch_threads: int | None = setting(None, "intra-op torch threads per worker; null: train.cpus_per_worker",
                                        lo=1, resumable=True)
    bf16: bool = setting(True, "bf16 autocast (GPU only)")
    compile: bool = setting(False, "torch.compile the student", resumable=True)
    max_failures: int = setting(2, "worker failures Ray Train recovers from (-1: unlimited)", lo=-1, resumable=True)
    min_workers: int | None = setting(None, "elastic training: run with any count in [min_workers, workers]; "
                                            "null keeps exactly `workers`", lo=1, resumable=True)
    elastic_resize_interval_s: float = setting(60.0, "seconds between Ray Train's looks for room to grow an "
                                                     "elastic run", lo=0.0, resumable=True)
    keep_state: bool = setting(True, "keep the resumable checkpoints/ after the last epoch; false leaves model.pt "
                                     "and logs", resumable=True)
    teacher_buffer_sync_every: int = setting(1, "steps between broadcasts of the teacher's BatchNorm buffers "
                                                "(0: never)", lo=0)
    sync_check_every: int = setting(50, "steps between checks that every rank holds the same teacher (0: never)",
                                    lo=0, resumable=True)
    sync_batchnorm: bool = setting(False, "SyncBatchNorm in the student (not the teacher); GPU only")
    select_metric: str = setting("accuracy", "validation metric that chooses the epoch and branch of model.pt",
                                 choices=("accuracy", "mean_class_accuracy"))
    model_epoch: str = setting("auto", "which epoch model.pt holds: best (the best validation score of the run, "
                                       "protocol val_selected), last (the last epoch, protocol last), auto (last "
                                       "for methods with an EMA teacher, best without one; docs/experiments.md, "
                                       "'Which epoch model.pt holds'); the branch is chosen on validation",
                               choices=("auto", "best", "last"))
    checkpoint_every_steps: int = setting(0, "steps between mid-epoch checkpoints (0: only at each epoch's end); "
                                             "a run stopped mid-epoch resumes at the next step, every sample of "
                                             "the epoch still trained once", lo=0, resumable=True)
    trace_samples: bool = setting(False, "write the sample idx of every training step, per rank and process, to "
                                         "RUN/sample_trace/ (to check the data order, e.g. across a resume; local "
                                         "run directories only)", resumable=True)
    fail_at_step: int | None = setting(None, lo=0, doc="test hook: rank 0 exits at this global step (once per "
                                                       "run directory) to exercise recovery", resumable=True)


@dataclass
class Config:
    """A training run."""

    data: DataConfig = section(DataConfig, "input data and augmentation")
    model: ModelConfig = section(ModelConfig, "the network")
    method: MethodConfig = section(MethodConfig, "the method and its hyperparameters")
    noise: NoiseConfig = section(NoiseConfig, "label noise")
    optim: OptimConfig = section(OptimConfig, "the optimizer")
    train: TrainConfig = section(TrainConfig, "schedule, workers, recovery")

    @property
    def preset(self) -> MethodPreset:
        """The behaviour switches of ``method.name`` (soft_dist.method.presets)."""
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
            problem = credentials_problem(str(value))
            if problem:  # before the value is copied anywhere (config.yaml, model cards, Ray's arguments)
                raise ConfigError(path, problem, source)
            return str(value)
    elif origin is list:
        if isinstance(value, (list, tuple)):
            item = get_args(hint)  # list[float]: every element is checked as a float
            return [_coerce(v, item[0], f"{path}[{i}]", source) for i, v in enumerate(value)] if item else list(value)
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    else:  # pragma: no cover - a new field type was added without support here
        raise TypeError(f"unsupported config type {hint} for {path}")
    name = getattr(origin, "__name__", str(origin))
    raise ConfigError(path, f"expected {name}, got {type(value).__name__} {value!r}", source)


def _range_text(bounds: tuple) -> str:
    """(lo, hi, lo_open, hi_open) -> "(0.0, 1.0]"; a missing bound is -inf / inf."""
    lo, hi, lo_open, hi_open = bounds
    return f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{')' if hi_open else ']'}"


def _check_range(value: Any, meta: dict, path: str, source: str | None) -> None:
    if value is None:
        return
    if isinstance(value, list):  # the length, then every element against the range
        if "length" in meta and len(value) != meta["length"]:
            raise ConfigError(path, f"needs {meta['length']} values, got {len(value)}: {value!r}", source)
        for i, item in enumerate(value):
            _check_range(item, {k: v for k, v in meta.items() if k != "length"}, f"{path}[{i}]", source)
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(path, f"must be one of {list(meta['choices'])}, got {value!r}", source)
    if "range" in meta:
        lo, hi, lo_open, hi_open = meta["range"]
        bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
            hi is not None and (value >= hi if hi_open else value > hi)
        )
        if bad:
            raise ConfigError(path, f"must be in {_range_text(meta['range'])}, got {value!r}", source)


def check_fields(obj: Any, name_of: Callable[[str], str] = lambda key: key, source: str | None = None) -> None:
    """Check every declared field of the dataclass instance ``obj`` against its type and allowed values
    (for option sets that are built in code, like soft_dist.shard.build.ShardConfig). Errors name the
    field as ``name_of(key)``, e.g. a --flag."""
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if "doc" not in f.metadata:
            continue
        value = _coerce(getattr(obj, f.name), hints[f.name], name_of(f.name), source)
        _check_range(value, f.metadata, name_of(f.name), source)


def field_declaration(dotted: str) -> tuple[dataclasses.Field, Any] | None:
    """The declaration (dataclass field, type hint) of a leaf field by its dotted YAML key, e.g.
    ``method.lambda``; None when no such leaf exists (unknown key, or a section)."""
    cls: Any = Config
    found = None
    for part in dotted.split("."):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return None
        by_key = {_yaml_key(f): f for f in dataclasses.fields(cls)}
        if part not in by_key:
            return None
        found = (by_key[part], get_type_hints(cls)[by_key[part].name])
        cls = found[1]
    if found is None or dataclasses.is_dataclass(found[1]):
        return None
    return found


def check_field_value(dotted: str, value: Any, source: str | None = None) -> Any:
    """``value`` checked (and coerced, e.g. 1 -> 1.0) against the declaration of field ``dotted``: what a
    grid axis or an override holds is validated exactly as in a config file. Errors name the field."""
    declaration = field_declaration(dotted)
    if declaration is None:
        raise ConfigError(dotted, "not a config field (docs/config.md lists them)", source)
    f, hint = declaration
    value = _coerce(value, hint, dotted, source)
    _check_range(value, f.metadata, dotted, source)
    return value


# Fields that did nothing and were removed: the config.yaml of a run made before still loads (for
# --resume), the key is ignored.
REMOVED_KEYS = frozenset({"train.log_every"})


def unknown_key_message(key: str, known, prefix: str = "") -> str:
    """"unknown key", the closest known key when there is one ("did you mean 'train.epochs'?", with
    ``prefix`` the section's dotted path), and every key of the section."""
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
    return f"unknown key{hint} (known keys here: {', '.join(sorted(map(str, known)))})"


def _build(cls: type, data: dict, prefix: str, sources: dict[str, str]) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ConfigError."""
    hints = get_type_hints(cls)
    by_key = {_yaml_key(f): f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in by_key and f"{prefix}{key}" not in REMOVED_KEYS:
            path = f"{prefix}{key}"
            raise ConfigError(path, unknown_key_message(key, by_key, prefix), sources.get(path))
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
    if cfg.train.min_workers is not None and cfg.train.min_workers > cfg.train.workers:
        raise ConfigError("train.min_workers", f"must be <= train.workers ({cfg.train.workers})",
                          sources.get("train.min_workers"))
    if cfg.train.sync_batchnorm and not cfg.train.use_gpu and cfg.train.workers > 1:
        raise ConfigError("train.sync_batchnorm", "needs train.use_gpu=true: torch's SyncBatchNorm runs on GPU only",
                          sources.get("train.sync_batchnorm"))
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


# The configs shipped with the package (soft_dist/configs links to the repository's configs/ folder).
BUNDLED_CONFIGS = Path(__file__).resolve().parent / "configs"


def bundled_names(folder: str = "") -> list[str]:
    """Names of the bundled configs in ``folder`` ("" for run configs, "experiments", "sweeps")."""
    root = BUNDLED_CONFIGS / folder
    return sorted(p.stem for p in root.glob("*.yaml")) if root.is_dir() else []


def locate_config(name_or_path: str | Path, folder: str = "") -> Path:
    """``name_or_path`` when that file exists; else, for a bare name (no folder part), the bundled
    ``folder/NAME.yaml`` when there is one; else ``name_or_path`` unchanged (the caller reports it)."""
    path = Path(name_or_path).expanduser()
    name = str(name_or_path)
    if path.is_file() or "/" in name or "\\" in name:
        return path
    stem = name[:-5] if name.endswith(".yaml") else name
    candidate = BUNDLED_CONFIGS / folder / f"{stem}.yaml"
    return candidate if candidate.is_file() else path


def resolve_config_path(name_or_path: str | Path, folder: str = "", what: str = "config") -> Path:
    """A config file: ``name_or_path`` when that file exists, else the bundled ``folder/NAME.yaml``.

    So ``--config digits_cpu`` works from any directory after an install; a missing file that is not a
    bundled name is a ConfigError listing the bundled names."""
    path = locate_config(name_or_path, folder)
    if path.is_file():
        return path
    raise ConfigError(what, f"file not found: {name_or_path} (and no bundled {what} of that name; bundled: "
                            f"{', '.join(bundled_names(folder)) or '(none)'})")


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


def _resolve_tau_relative(cfg: Config) -> None:
    """Fill a null method.tau_relative by model.pretrained, so the saved config says what ran."""
    if cfg.method.tau_relative is None:
        cfg.method.tau_relative = TAU_RELATIVE_PRETRAINED if cfg.model.pretrained else TAU_RELATIVE_FROM_SCRATCH


def _apply_pins(cfg: Config) -> None:
    """Set the method fields the preset pins (e.g. sls0: epsilon 0), so the resolved config is what runs."""
    for name, value in cfg.preset.pinned:
        setattr(cfg.method, name, value)


def resolve_for_classes(cfg: Config, num_classes: int) -> Config:
    """A copy of ``cfg`` with the settings that depend on the dataset's class count filled in, as they
    will run and be saved: ``method.tau = method.tau_relative / num_classes`` when method.tau is null.
    A method.tau the user gave is kept."""
    if num_classes < 2:
        raise ConfigError("data.shards", f"a classifier needs at least 2 classes, the shards have {num_classes}")
    resolved = copy.deepcopy(cfg)
    resolved.method.tau = resolved.method.tau_for(num_classes)
    return resolved


# Settings that name a local file or folder (or a URL, or for model.pretrained the word "imagenet").
LOCAL_PATH_KEYS = ("data.shards", "data.cache_dir", "model.pretrained", "noise.file", "noise.confusion_file")


def with_absolute_paths(cfg: Config, cwd: str | Path | None = None) -> Config:
    """A copy of ``cfg`` whose relative local paths (LOCAL_PATH_KEYS) are absolute, read against ``cwd``
    (default: the directory the command runs in, where the user meant them); ``~`` is expanded.

    Launchers call it before a config reaches another process: Ray Train starts each worker in a folder
    of its own (RAY_CHDIR_TO_TRIAL_DIR), where ``data.shards=data_shards/rafdb`` names nothing. URLs
    (s3://...) and "imagenet" are kept."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    out = copy.deepcopy(cfg)
    for key in LOCAL_PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(out, section), name)
        if value is None or "://" in value or (key == "model.pretrained" and value == "imagenet"):
            continue
        # normpath, not resolve(): "a/../b" is tidied without following links the user chose
        setattr(getattr(out, section), name, os.path.normpath(base / Path(value).expanduser()))
    return out


def _leaf_fields(obj: Any, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted YAML key, declaration, value) of every leaf field of the config (section) ``obj``."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{_yaml_key(f)}"
        if dataclasses.is_dataclass(value):
            yield from _leaf_fields(value, f"{key}.")
        else:
            yield key, f, value


def resumable_keys() -> list[str]:
    """The dotted keys a resumed run may change (declared ``resumable``)."""
    return [key for key, f, _ in _leaf_fields(Config()) if f.metadata.get("resumable")]


def check_resume_changes(saved: Config, resumed: Config, source: str | None = None) -> None:
    """Refuse a resume whose overrides change what is being learned: every key that differs between the
    run's saved config and the resumed one must be declared ``resumable`` (epochs, workers, caches, ...).
    The error names the key and the value the run was started with."""
    before = {key: value for key, _, value in _leaf_fields(saved)}
    for key, f, value in _leaf_fields(resumed):
        if before[key] == value or f.metadata.get("resumable"):
            continue
        raise ConfigError(key, f"cannot change when resuming: the run was started with {key}={before[key]!r} "
                          f"and its checkpoints learned with it (start a new run instead; keys a resume may "
                          f"change: {', '.join(resumable_keys())})", source)


def from_dict(data: dict, sources: dict[str, str] | None = None) -> Config:
    sources = sources or {}
    cfg = _build(Config, data, "", sources)
    _apply_pins(cfg)
    _resolve_tau_relative(cfg)
    _cross_checks(cfg, sources)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (a file, or the name of a bundled config; the defaults when None), apply dotted
    overrides, validate, return a Config."""
    sources: dict[str, str] = {}
    data = _read_yaml(resolve_config_path(path), sources) if path else {}
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


# ----------------------------------------------------------------------------- docs


def _type_name(hint: Any) -> str:
    optional = type(None) in get_args(hint)
    base = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
    name = getattr(get_origin(base) or base, "__name__", str(base))
    if get_origin(base) is list and get_args(base):
        name = f"list of {get_args(base)[0].__name__}"
    return f"{name} or null" if optional else name


def _allowed(meta: dict) -> str:
    if "choices" in meta:
        return " \\| ".join(str(c) for c in meta["choices"])
    parts = [f"{meta['length']} values"] if "length" in meta else []
    if "range" in meta:  # of a list field: of every element
        parts.append(("each in " if parts else "") + _range_text(meta["range"]))
    return ", ".join(parts)


def field_rows(cls: type = Config, prefix: str = "", name_of: Callable[[str], str] | None = None,
               defaults: Any = None) -> list[dict[str, str]]:
    """One row per declared leaf field: key (dotted, or ``name_of(attribute)``), type, default, allowed values
    and meaning (the field's doc). ``defaults``: an instance to read defaults from (else ``cls()``)."""
    rows = []
    hints = get_type_hints(cls)
    defaults = cls() if defaults is None else defaults
    for f in dataclasses.fields(cls):
        if "doc" not in f.metadata:
            continue
        key = name_of(f.name) if name_of else f"{prefix}{_yaml_key(f)}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(field_rows(hint, f"{key}."))
            continue
        default = yaml.safe_dump(getattr(defaults, f.name), default_flow_style=True)
        meaning = f.metadata.get("doc", "") + (" (may change on `--resume`)" if f.metadata.get("resumable") else "")
        rows.append({"key": key, "type": _type_name(hint), "default": default.strip().removesuffix("...").strip(),
                     "allowed": _allowed(f.metadata), "meaning": meaning})
    return rows


def fields_table(rows: list[dict[str, str]]) -> list[str]:
    """Markdown lines of a table of :func:`field_rows`."""
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| `{row['key']}` | {row['type']} | `{row['default']}` | {row['allowed']} | {row['meaning']} |")
    return lines


def config_docs() -> str:
    """Markdown reference of every config field and every method preset (docs/config.md is this text)."""
    lines = ["# Configuration reference", "",
             "Generated by `soft-dist config docs` from the field declarations in `soft_dist/config.py` (`make docs`",
             "rewrites this file; a test keeps it in sync). A run's config is a YAML file (or the name of a bundled",
             "one, e.g. `--config digits_cpu`) plus `section.key=value` overrides; `soft-dist config show NAME|FILE",
             "[key=value ...]` prints the resolved result, which is what a run saves as its config.yaml.", "",
             "**Epochs are numbered from 1** in every file and message: the console's `epoch 3/8`, the `epoch` of",
             "metrics.jsonl, results.json, model.pt and the model card, the checkpoint folder `checkpoints/epoch_0003`",
             "and audit's \"checkpoint of epoch 3\" all mean the third epoch, after which 3 epochs are done. Fields",
             "that count epochs (`method.stage1_epochs: 6`: the head is on from epoch 7) count the same way.", ""]
    hints = get_type_hints(Config)
    for f in dataclasses.fields(Config):
        section_cls = hints[f.name]
        lines += [f"## {f.name}: {f.metadata['doc']}", "", *fields_table(field_rows(section_cls, f"{f.name}.")), ""]
    lines += ["## Method presets (`method.name`)", "",
              "Each preset is a `MethodPreset` in `soft_dist/method/presets.py`; the objective reads only these switches.",
              "Per-sample epsilon: each sample's smoothing mass is `method.epsilon` times the teacher's normalised",
              "entropy on it (0 for a one-hot teacher, all of `method.epsilon` for a uniform one). Teacher pool: the",
              "SLS source is the mean of the softmaxes of the current teacher and of that many frozen past teachers,",
              "those with the best validation scores so far (kept in the checkpoint; `teacher_pool` in metrics.jsonl).",
              "", "| name | teacher | consistency target | SLS on | uncertainty head | CE target | per-sample epsilon "
              "| teacher pool | pins | what it is |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in METHOD_PRESETS.items():
        pins = ", ".join(f"{k}={v}" for k, v in p.pinned)
        sls_on = p.sls_on if p.target == "sls" else ""
        lines.append(f"| `{name}` | {'yes' if p.teacher else 'no'} | {p.target} | {sls_on} | "
                     f"{'yes' if p.head else 'no'} | {p.ce_target} | {'yes' if p.epsilon_per_sample else 'no'} | "
                     f"{p.teacher_pool or ''} | {pins} | {p.summary} |")
    return "\n".join(lines) + "\n"
