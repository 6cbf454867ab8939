"""The noise table of a run, made from its config and shards: the one set-up shared by training, sweeps,
benchmarks and experiments (no torch, Ray or DALI here)."""

from __future__ import annotations

import numpy as np

from soft_dist.config import Config, ConfigError
from soft_dist.data.format import load_manifest
from soft_dist.data.labels import read_split_labels
from soft_dist.data.splits import run_splits
from soft_dist.data.stage import local_shards
from soft_dist.noise.lists import NoiseListError, read_noise_list
from soft_dist.noise.table import NoiseTable, build_noise_table, class_map_from_confusion


def make_noise_table(cfg: Config) -> tuple[NoiseTable, int]:
    """The run's noise table (made once from the shards' clean labels, or read from noise.file: a noise
    table, or a published list in noise.file_format mapped onto the shards' samples)."""
    if not cfg.data.shards:
        raise ConfigError("data.shards", "set it to a folder written by `soft-dist shard` (with manifest.json)")
    manifest = load_manifest(local_shards(cfg.data.shards, cfg.data.cache_dir, cfg.data.cache_max_gb))
    if cfg.noise.kind == "file" and cfg.noise.file_format == "table":
        return NoiseTable.load(cfg.noise.file), manifest.num_classes
    roles = run_splits(manifest, cfg.data)
    if cfg.noise.kind == "file":
        try:
            table = read_noise_list(cfg.noise.file, cfg.noise.file_format, manifest, roles)
        except NoiseListError as err:
            raise ConfigError(err.field, str(err)) from err
        return table, manifest.num_classes
    splits = {role: read_split_labels(manifest, roles[role]) for role in ("train", "val")}
    class_map = resolve_class_map(cfg, manifest.classes)
    table = build_noise_table(splits, manifest.num_classes, cfg.noise.kind, cfg.noise.rate, cfg.noise.seed, class_map)
    return table, manifest.num_classes


def resolve_class_map(cfg: Config, classes: tuple[str, ...]) -> dict[int, int] | None:
    """noise.class_map by class name or index, or from noise.confusion_file; None for symmetric."""
    if cfg.noise.kind != "asymmetric":
        return None
    if cfg.noise.confusion_file:
        return class_map_from_confusion(np.loadtxt(cfg.noise.confusion_file, delimiter=","))
    if not cfg.noise.class_map:
        raise ConfigError("noise.class_map", "asymmetric noise needs noise.class_map or noise.confusion_file")
    index = {name: i for i, name in enumerate(classes)}

    def resolve(key) -> int:
        if isinstance(key, int) or str(key).isdigit():
            value = int(key)
            if 0 <= value < len(classes):
                return value
        elif str(key) in index:
            return index[str(key)]
        raise ConfigError("noise.class_map", f"unknown class {key!r}; classes are {list(classes)}")

    return {resolve(k): resolve(v) for k, v in cfg.noise.class_map.items()}
