"""Every value of every field that shapes a distributed run (tests/field_walk.py) is either refused when
the config is read, naming the field, or trains: a 2-epoch run of one step per epoch on 2 ranks finishes
with results.json, its teachers identical on both ranks after every step.

In the suite, the accepted values are packed into as few runs as their fields allow (each run sets one
value of as many fields as load together), so every value runs once. The ``train.*`` values (workers,
failures, checkpoints, precision, selection) run through Ray Train on a real 2-worker local Ray cluster
(the session's). The ``method.*`` values change only what each rank computes, which needs no Ray: their
runs (one per method preset) train one after another in the same 2 processes, a real torch.distributed
(gloo) group running the same rank code as a Ray Train worker (``train_rank``): 13 runs for the start-up
of one instead of 13 Ray Train runs (12-35 s each, most of it three new processes importing torch).
`make test-field-walk` runs every value on its own through Ray Train (slow), which also tells which
field broke when a packed run fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from field_walk import walked_values
from shard_fixtures import write_digit_shards
from soft_dist.config import ConfigError, load_config
from soft_dist.method.presets import METHOD_PRESETS
from soft_dist.train.ray_trainer import run_training
from two_ranks import prepare_run, train_runs_on_two_ranks

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits_cpu.yaml"
# 64 training images in 4 shards: each of 2 ranks gets 32, one batch, so an epoch is one step.
BASE = ["data.image_size=16", "model.width=16", "train.epochs=2", "train.workers=2", "train.batch_size=64",
        "train.eval_batch_size=64", "method.stage1_epochs=1", "method.rampup_epochs=1", "train.sync_check_every=1"]
# Values that cannot run on a machine without the hardware they ask for; without it they must be refused
# before any worker starts, naming the field.
NEEDS_GPU = {("train.use_gpu", True)}
# torch.compile takes minutes on 2 CPU cores: walked by `make test-field-walk` only.
SLOW_VALUES = {("train.compile", True)}


def override(key: str, value: Any) -> str:
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return f"{key}={text}"


def load(shards: Path | str, settings: dict[str, Any]):
    return load_config(CONFIG, [f"data.shards={shards}", *BASE, *(override(k, v) for k, v in settings.items())])


def accepted_values(shards="unused") -> list[tuple[str, Any]]:
    out = []
    for key, value in walked_values():
        try:
            load(shards, {key: value})
            out.append((key, value))
        except ConfigError:
            pass
    return out


def packed_runs(values: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """The values grouped into runs, spread evenly: the fields with the most values open the runs, and
    each further value goes into the run with the fewest settings that does not set its field yet and
    still loads with it (cross-field rules, e.g. min_workers <= workers, decide)."""
    count = {key: sum(k == key for k, _ in values) for key, _ in values}
    runs: list[dict[str, Any]] = []
    for key, value in sorted(values, key=lambda kv: -count[kv[0]]):  # stable: declaration order within
        fits = []
        for run in runs:
            if key in run:
                continue
            try:
                load("unused", {**run, key: value})
            except ConfigError:
                continue
            fits.append(run)
        if fits:
            min(fits, key=len)[key] = value
        else:
            runs.append({key: value})
    return runs


@pytest.fixture(scope="module")
def walk_shards(tmp_path_factory) -> Path:
    return write_digit_shards(tmp_path_factory.mktemp("walk"), {"train": 64, "val": 32, "test": 32},
                              image_size=16, shard_size=16)


def test_each_walked_value_loads_or_is_refused_naming_its_field():
    values = walked_values()
    assert ("train.teacher_buffer_sync_every", 0) in values and ("method.teacher_buffers", "ema") in values
    refused = 0
    for key, value in values:
        try:
            load("unused", {key: value})
        except ConfigError as err:
            refused += 1
            assert err.field_path == key, f"{key}={value!r} refused under another field: {err}"
    assert refused >= 5  # the open range ends (tau 0 and 1, tau_relative 0 and 2, epsilon 1) at least


def train_or_refusal(shards: Path, settings: dict[str, Any], run_dir: Path) -> str:
    """'ok' when the run finished with results.json, else the ConfigError's field."""
    try:
        results = run_training(load(shards, settings), run_dir, echo=None)
    except ConfigError as err:
        return f"refused: {err.field_path}"
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == results["epochs"]
    return "ok"


def _cluster_has_gpu() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


# Fixed at collection. The suite trains every accepted value but the slow ones and those that need hardware
# (trained or refused in the test after the runs, by what the cluster has), packed into runs: the method
# values in one test of 2 ranks without Ray, the others through Ray Train, each run a test of its own so
# that a failure names its run.
ACCEPTED = accepted_values()
SUITE_VALUES = [kv for kv in ACCEPTED if kv not in SLOW_VALUES | NEEDS_GPU]
METHOD_RUNS = packed_runs([kv for kv in SUITE_VALUES if kv[0].startswith("method.")])
RAY_RUNS = packed_runs([kv for kv in SUITE_VALUES if not kv[0].startswith("method.")])


def test_the_packed_runs_hold_every_accepted_value_once():
    packed = [(key, value) for run in METHOD_RUNS + RAY_RUNS for key, value in run.items()]
    assert sorted(map(repr, packed)) == sorted(map(repr, SUITE_VALUES))
    assert len(METHOD_RUNS) == len(METHOD_PRESETS)  # as few as the field with most values (method.name) allows
    assert all(key.startswith("train.") for run in RAY_RUNS for key in run)
    assert len(RAY_RUNS) <= 3  # train.model_epoch's 3 values: one Ray Train run each


@pytest.mark.slow  # 13 runs, one per method preset, in 2 processes
def test_method_values_train_on_two_ranks(walk_shards, tmp_path):
    run_dirs = [tmp_path / f"run{i}-{run['method.name']}" for i, run in enumerate(METHOD_RUNS)]
    for settings, run_dir in zip(METHOD_RUNS, run_dirs):
        prepare_run(load(walk_shards, settings), run_dir)
    train_runs_on_two_ranks(run_dirs, tmp_path)
    for settings, run_dir in zip(METHOD_RUNS, run_dirs):
        results = json.loads((run_dir / "results.json").read_text())
        assert results["epochs"] == 2 and results["throughput"]["workers"] == 2, settings
        sync, digests = results["teacher_sync"], results["teacher_digests"]  # digests gathered from both ranks
        if METHOD_PRESETS[settings["method.name"]].teacher:  # BASE compares the teachers after every step
            assert sync["mismatches"] == 0 and sync["checks"] >= 2, (settings, sync)
            assert len(digests) == 2 and digests[0] == digests[1], settings  # buffers included, at the end
        else:
            assert sync["checks"] == 0 and digests == [], settings


@pytest.mark.slow  # together: 3 Ray Train runs, 12-35 s each in the parallel suite
@pytest.mark.parametrize("settings", [pytest.param(run, id=f"run{i}") for i, run in enumerate(RAY_RUNS)])
def test_packed_values_train_on_two_workers(settings, walk_shards, ray_cluster, tmp_path):
    assert train_or_refusal(walk_shards, settings, tmp_path / "run") == "ok", settings


def test_values_the_cluster_cannot_hold_are_refused_before_anything_is_written(walk_shards, ray_cluster, tmp_path):
    for key, value in NEEDS_GPU:
        expected = "ok" if _cluster_has_gpu() else f"refused: {key}"
        assert train_or_refusal(walk_shards, {key: value}, tmp_path / "gpu") == expected
        if expected != "ok":
            assert not (tmp_path / "gpu").exists()  # refused before the run directory was written
    # More workers than the 2-CPU cluster holds: refused at once rather than waiting for ever.
    assert train_or_refusal(walk_shards, {"train.workers": 3}, tmp_path / "big") == "refused: train.workers"
    assert train_or_refusal(walk_shards, {"train.workers": 3, "train.min_workers": 3},
                            tmp_path / "big") == "refused: train.min_workers"
    assert not (tmp_path / "big").exists()


@pytest.mark.field_walk
@pytest.mark.parametrize("key, value", ACCEPTED, ids=lambda v: str(v))
def test_each_accepted_value_trains_on_its_own(key, value, walk_shards, ray_cluster, tmp_path):
    if (key, value) in NEEDS_GPU and not _cluster_has_gpu():
        assert train_or_refusal(walk_shards, {key: value}, tmp_path) == f"refused: {key}"
    else:
        assert train_or_refusal(walk_shards, {key: value}, tmp_path) == "ok"
