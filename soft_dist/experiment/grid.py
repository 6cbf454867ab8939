"""Experiment grid files: parsing, validation and expansion into cells.

A grid file (YAML, see configs/experiments/ and docs/experiments.md) names a base run config and the
axes to sweep::

    extends: digits_hard.yaml         # optional: another grid file this one varies (relative to it)
    base: ../digits_cpu.yaml          # run config, path relative to the grid file
    overrides: [train.epochs=4]       # optional, applied to every cell
    methods: [ce, mt, soft]           # METHOD_PRESETS names
    noise_kinds: [symmetric]          # symmetric | asymmetric
    noise_rates: [0.3, 0.5]           # each in [0, 1)
    seeds: [0, 1]                     # a cell's seed sets BOTH train.seed and noise.seed
    folds: 5                          # optional: cells over data.fold = 0..4 with data.folds = 5
    split_seeds: [0, 1]               # optional: data.split_seed of the carve (folds / val_fraction)
    extra:                            # optional: any dotted config key -> list of values
      method.epsilon: [0.1, 0.3]
    asymmetric_from: confusion        # optional: derive noise.class_map from a plain CE model
    sls_bars: {method: soft, images: 6}   # optional: the Fig. 1-style plot

A grid that ``extends`` another starts from that grid's keys (recursively): ``overrides`` are appended
to the parent's, mappings (``extra``, ``sls_bars``) are merged key by key (a key set to null drops the
inherited one), and any other key replaces the parent's. So an ablation names only what it changes,
and a schedule lives in one file.

Structure and names are checked here (GridError names the field and the file); the values of each
cell's config, and its noise table against the shards, are checked before any cell trains
(soft_dist.experiment.runner), so one bad value fails that cell only, and says so once at the start.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from soft_dist.config import (METHOD_PRESETS, ConfigError, bundled_names, check_field_value, field_declaration,
                               locate_config, load_config, parse_override)

NOISE_KINDS = ("symmetric", "asymmetric")
# Config keys a cell sets itself: the grid's axes. Overrides may not name them (they would silently
# collapse the grid). The data-split keys are axes even in a grid that does not sweep them, so that a
# split is always visible in the cell names and cells.csv (set them with folds / split_seeds).
AXIS_KEYS = ("method.name", "noise.kind", "noise.rate", "train.seed", "noise.seed", "data.folds", "data.fold",
             "data.split_seed")
TOP_KEYS = ("extends", "base", "overrides", "methods", "noise_kinds", "noise_rates", "seeds", "folds", "split_seeds",
            "extra", "asymmetric_from", "sls_bars", "description")
MAX_FOLDS = 1000  # = the range of data.folds in soft_dist.config


class GridError(ValueError):
    """A problem in a grid file, naming the field and the file."""

    def __init__(self, field_path: str, message: str, source: str | None = None):
        where = f" (in {source})" if source else ""
        super().__init__(f"grid field '{field_path}'{where}: {message}")
        self.field_path = field_path


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    method: str
    noise_kind: str
    noise_rate: float
    seed: int
    extra: tuple[tuple[str, Any], ...] = ()  # ((dotted key, value), ...) in the grid file's order
    folds: int = 0  # K of data.folds when the grid has `folds` (0: the shards' or the base config's splits)
    fold: int | None = None  # data.fold (the test fold), with folds only
    split_seed: int | None = None  # data.split_seed, when the grid has `split_seeds`

    @property
    def name(self) -> str:
        """Folder name: <method>-<kind>-<rate>-s<seed>[-fold<f>][-split<s>][-<key><value>...] (last key
        segment only). Without folds / split_seeds a name is what it was before those axes existed, so
        older experiment folders keep their finished cells."""
        parts = [self.method, self.noise_kind, f"{self.noise_rate:g}", f"s{self.seed}"]
        if self.fold is not None:
            parts.append(f"fold{self.fold}")
        if self.split_seed is not None:
            parts.append(f"split{self.split_seed}")
        parts += [f"{key.split('.')[-1]}{_compact(value)}" for key, value in self.extra]
        return "-".join(parts)

    def overrides(self) -> list[str]:
        """The dotted overrides that make this cell out of the base config (applied last)."""
        out = [f"method.name={self.method}", f"noise.kind={self.noise_kind}", f"noise.rate={self.noise_rate}",
               f"train.seed={self.seed}", f"noise.seed={self.seed}"]
        if self.fold is not None:
            out += [f"data.folds={self.folds}", f"data.fold={self.fold}"]
        if self.split_seed is not None:
            out.append(f"data.split_seed={self.split_seed}")
        # Values are parsed back as YAML scalars by soft_dist.config.parse_override.
        return out + [f"{key}={value}" for key, value in self.extra]

    def units(self) -> dict:
        """What identifies the run apart from method, noise and extra axes: the seed, and the fold and
        split seed when the grid sweeps them. Two methods' runs with equal units are a pair."""
        out = {"seed": self.seed}
        if self.fold is not None:
            out["fold"] = self.fold
        if self.split_seed is not None:
            out["split_seed"] = self.split_seed
        return out

    def row(self) -> dict:
        """Axis columns of this cell for the CSV files."""
        return {"cell": self.name, "method": self.method, "noise_kind": self.noise_kind,
                "noise_rate": self.noise_rate, **self.units(), **dict(self.extra)}


def _compact(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return "".join(ch if ch.isalnum() or ch in "._" else "_" for ch in text)


@dataclass
class SlsBars:
    method: str = "soft"  # the cells whose teacher is plotted (the first finished one)
    images: int = 6  # training images shown, half with a flipped label when there are any


@dataclass
class Grid:
    path: Path  # the grid file
    base: Path  # the base run config (resolved)
    methods: list[str]
    noise_kinds: list[str]
    noise_rates: list[float]
    seeds: list[int]
    folds: int | None = None  # K >= 2: one cell per test fold 0..K-1
    split_seeds: list[int] | None = None
    overrides: list[str] = field(default_factory=list)
    extra: dict[str, list] = field(default_factory=dict)
    asymmetric_from: str | None = None  # None (class map from the config) | "confusion"
    sls_bars: SlsBars | None = field(default_factory=SlsBars)
    description: str = ""

    def cells(self) -> list[Cell]:
        """Every cell, in file order: method, kind, rate, extra values, split seed, fold, seed (seed
        varies fastest)."""
        extra_keys = list(self.extra)
        combos = list(itertools.product(*(self.extra[k] for k in extra_keys))) or [()]
        split_seeds = self.split_seeds or [None]
        folds = list(range(self.folds)) if self.folds else [None]
        return [
            Cell(m, k, float(r), int(s), tuple(zip(extra_keys, combo)), folds=self.folds or 0, fold=f,
                 split_seed=ss)
            for m, k, r, combo, ss, f, s in itertools.product(self.methods, self.noise_kinds, self.noise_rates,
                                                              combos, split_seeds, folds, self.seeds)
        ]

    @property
    def unit_keys(self) -> list[str]:
        """cells.csv columns that identify a run within its (method, noise, extra) group."""
        return ["seed", *(["fold"] if self.folds else []), *(["split_seed"] if self.split_seeds else [])]


def config_key_exists(dotted: str) -> bool:
    """Whether ``dotted`` names a leaf field of :class:`Config` (YAML names, e.g. ``method.lambda``)."""
    return field_declaration(dotted) is not None


def _check_axis_values(values: list, dotted: str, where: str, source: str) -> list:
    """Each value of a grid axis checked by the declaration of the config field it sets."""
    try:
        return [check_field_value(dotted, v) for v in values]
    except ConfigError as err:
        raise GridError(where, f"{dotted} {err.message}", source) from None


def _list(data: dict, key: str, source: str, kind: type | tuple, required: bool = True) -> list:
    if key not in data:
        if required:
            raise GridError(key, "missing (a non-empty list)", source)
        return []
    value = data[key]
    if not isinstance(value, list) or not value:
        raise GridError(key, f"expected a non-empty list, got {value!r}", source)
    for item in value:
        if not isinstance(item, kind) or isinstance(item, bool):
            raise GridError(key, f"item {item!r} is not a {getattr(kind, '__name__', kind)}", source)
    if len(set(map(repr, value))) != len(value):
        raise GridError(key, f"repeated values in {value!r}", source)
    return list(value)


def check_overrides(overrides: list[str], field_path: str, source: str | None, axes: tuple[str, ...]) -> None:
    """Overrides must look like key=value, name an existing config field, and not name a grid axis."""
    for text in overrides:
        if not isinstance(text, str) or "=" not in text:
            raise GridError(field_path, f"{text!r} is not a dotted key=value override", source)
        key = text.split("=", 1)[0].strip()
        if key in axes:
            raise GridError(field_path, f"'{key}' is a grid axis, set by each cell; change the grid instead", source)
        if not config_key_exists(key):
            raise GridError(field_path, f"'{key}' is not a config field", source)
        try:
            check_field_value(key, parse_override(text)[1])
        except ConfigError as err:
            raise GridError(field_path, f"{text!r}: {key} {err.message}", source) from None


def load_grid(path: str | Path, check_base: bool = True) -> Grid:
    """Read and validate a grid file.

    ``check_base=False`` skips what needs the base config on disk (the file, and whether it carves
    splits for ``split_seeds``): for reading the copy DIR/grid.yaml of a finished experiment elsewhere."""
    path = locate_config(path, "experiments").resolve()  # a bare name: the bundled one of that name
    data, chain = _flattened(path, ())
    source = str(path) if len(chain) == 1 else f"{path}, extending {' -> '.join(p.name for p in chain[1:])}"

    if not isinstance(data.get("base"), str):
        raise GridError("base", "missing: the run config this grid starts from (path relative to the grid file)",
                        source)
    base = Path(data["base"])  # resolved against the file that names it (_flattened)
    if check_base and not base.is_file():
        raise GridError("base", f"file not found: {base}", source)

    methods = _check_axis_values(_list(data, "methods", source, str), "method.name", "methods", source)
    kinds = _list(data, "noise_kinds", source, str)
    for k in kinds:  # a grid injects noise itself: a subset of noise.kind's values
        if k not in NOISE_KINDS:
            raise GridError("noise_kinds", f"unknown noise kind {k!r}; known: {list(NOISE_KINDS)}", source)
    rates = _check_axis_values(_list(data, "noise_rates", source, (int, float)), "noise.rate", "noise_rates", source)
    seeds = _list(data, "seeds", source, int)
    folds = data.get("folds")
    if folds is not None and (not isinstance(folds, int) or isinstance(folds, bool) or not 2 <= folds <= MAX_FOLDS):
        raise GridError("folds", f"expected an integer K in [2, {MAX_FOLDS}] (cells test folds 0..K-1), "
                        f"got {folds!r}", source)
    split_seeds = _list(data, "split_seeds", source, int, required=False) or None
    for s in split_seeds or []:
        if s < 0:
            raise GridError("split_seeds", f"seed {s!r} is negative (numpy's generators need seeds >= 0)", source)

    extra = data.get("extra") or {}
    if not isinstance(extra, dict):
        raise GridError("extra", f"expected a mapping of dotted config key -> list of values, got {extra!r}", source)
    for key, values in extra.items():
        if key in AXIS_KEYS:
            raise GridError(f"extra.{key}", "is a main grid axis; use methods/noise_kinds/noise_rates/seeds/folds/"
                            "split_seeds", source)
        if not config_key_exists(str(key)):
            raise GridError(f"extra.{key}", "is not a config field (e.g. method.epsilon, method.tau)", source)
        _check_axis_values(_list(extra, key, source, (int, float, str)), str(key), f"extra.{key}", source)

    overrides = data.get("overrides") or []
    if not isinstance(overrides, list):
        raise GridError("overrides", f"expected a list of key=value strings, got {overrides!r}", source)
    check_overrides(overrides, "overrides", source, AXIS_KEYS + tuple(extra))
    if split_seeds and folds is None and check_base and "data.val_fraction" not in extra:
        _check_split_seeds_carve(base, overrides, source)

    asymmetric_from = data.get("asymmetric_from")
    if asymmetric_from not in (None, "confusion"):
        raise GridError("asymmetric_from", f"must be 'confusion' or absent, got {asymmetric_from!r}", source)

    bars = data.get("sls_bars", {})
    sls_bars = None
    if bars is not False and bars is not None:
        if not isinstance(bars, dict) or set(bars) - {"method", "images"}:
            raise GridError("sls_bars", "expected {method: NAME, images: N} or false", source)
        sls_bars = SlsBars(**bars)
        if sls_bars.method not in METHOD_PRESETS or not METHOD_PRESETS[sls_bars.method].teacher:
            raise GridError("sls_bars.method", f"{sls_bars.method!r} is not a method with a teacher", source)
        if not isinstance(sls_bars.images, int) or not 1 <= sls_bars.images <= 32:
            raise GridError("sls_bars.images", f"must be an integer in [1, 32], got {sls_bars.images!r}", source)

    return Grid(path=path, base=base, methods=methods, noise_kinds=kinds, noise_rates=rates, seeds=seeds,
                folds=folds, split_seeds=split_seeds, overrides=list(overrides),
                extra={str(k): list(v) for k, v in extra.items()},
                asymmetric_from=asymmetric_from, sls_bars=sls_bars, description=str(data.get("description") or ""))


def _read_mapping(path: Path) -> dict:
    """A grid file's top-level mapping, its keys checked by name."""
    source = str(path)
    if not path.is_file():
        raise GridError("(file)", f"file not found (bundled grids: {', '.join(bundled_names('experiments'))})", source)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise GridError("(file)", f"not valid YAML: {err}", source) from err
    if not isinstance(data, dict):
        raise GridError("(file)", "the top level must be a mapping", source)
    for key in data:
        if key not in TOP_KEYS:
            raise GridError(str(key), f"unknown key; known keys: {list(TOP_KEYS)}", source)
    return data


def _flattened(path: Path, seen: tuple[Path, ...]) -> tuple[dict, tuple[Path, ...]]:
    """The grid file's keys merged over those of the grids it extends, and that chain of files (this one
    first). ``base`` comes back as an absolute path, resolved against the file that names it."""
    source = str(path)
    if path in seen:
        raise GridError("extends", f"cycle: {' -> '.join(p.name for p in (*seen, path))}", str(seen[-1]))
    data = _read_mapping(path)
    if "base" in data and isinstance(data["base"], str):
        data["base"] = str((path.parent / data["base"]).resolve())
    parent_name = data.pop("extends", None)
    if parent_name is None:
        return data, (path,)
    if not isinstance(parent_name, str):
        raise GridError("extends", f"expected the path of a grid file (relative to this one), got {parent_name!r}",
                        source)
    parent = (path.parent / parent_name).resolve()
    if not parent.is_file():
        raise GridError("extends", f"file not found: {parent}", source)
    merged, chain = _flattened(parent, (*seen, path))
    own_extra = data.get("extra")
    axes = {k for k, v in own_extra.items() if v is not None} if isinstance(own_extra, dict) else set()
    if axes and isinstance(merged.get("overrides"), list):
        # An axis this grid adds replaces an inherited override of its key (an ablation of tau over a parent
        # that fixes tau); an override of its own that names an axis is still an error (check_overrides).
        merged["overrides"] = [o for o in merged["overrides"]
                               if not (isinstance(o, str) and o.split("=", 1)[0].strip() in axes)]
    for key, value in data.items():
        inherited = merged.get(key)
        if key == "overrides" and isinstance(value, list) and isinstance(inherited, list):
            merged[key] = inherited + value  # later overrides of the same key win (soft_dist.config)
        elif isinstance(value, dict) and isinstance(inherited, dict):
            # As in a JSON merge patch (RFC 7396): a key set to null drops the inherited axis.
            merged[key] = {k: v for k, v in {**inherited, **value}.items() if v is not None}
        else:
            merged[key] = value
    return merged, (path, *chain)


def flattened_grid_text(grid: Grid) -> str | None:
    """The YAML of a grid that extends others, with every inherited key written out (for DIR/grid.yaml,
    which must stand alone); None for a grid that extends nothing (its file is its copy)."""
    data, chain = _flattened(grid.path, ())
    if len(chain) == 1:
        return None
    own_comments = "".join(_leading_comments(grid.path.read_text()))  # the commands in its header
    written_from = "".join(f"# {'written out from' if i == 0 else 'extending'} {p}\n" for i, p in enumerate(chain))
    return own_comments + written_from + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _leading_comments(text: str) -> list[str]:
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        lines.append(line if line.endswith("\n") else line + "\n")
    return lines


def _check_split_seeds_carve(base: Path, overrides: list[str], source: str) -> None:
    """split_seeds without folds only change anything when the run carves its validation split: a grid
    whose cells would all be the same run is a mistake, not a sweep."""
    try:
        cfg = load_config(base, overrides)
    except ConfigError:
        return  # a bad base value fails every cell with its own error; not this field's problem
    if cfg.data.val_fraction is None:
        raise GridError("split_seeds", "data.split_seed only changes a run that carves its splits: add `folds: K`, "
                        "or set data.val_fraction in the base config, the grid's overrides or an extra axis",
                        source)
