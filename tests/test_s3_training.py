"""Training end to end against object storage: run directory and shards both in a bucket of a real S3
endpoint (moto's HTTP server, the `s3_server` fixture), on a real local 2-CPU Ray cluster with 2 Train
workers at tiny sizes. A clean run, and `--resume` of a run whose rank 0 died, continuing from the bucket
alone (a replaced worker takes the same path: the newest complete checkpoint in the run directory; that
path is exercised ten times in a row locally by tests/test_ray_train.py); and the in-process run loop
with an s3:// run directory."""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path

import pytest

from soft_dist.config import load_config

pytestmark = pytest.mark.ray

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits_cpu.yaml"
BUCKET = "soft-dist-e2e"
EPOCHS = 2
# digits train split = 1,258 images; batch 128 over 2 ranks -> 5 steps per epoch per rank (padded).
STEPS_PER_EPOCH = 5
FAIL_AT_STEP = 8  # in the middle of the second epoch


# ----------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def s3(s3_server):
    """A boto3 client of the test endpoint, with the test bucket created."""
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
def shards_url(s3, digit_shards) -> str:
    """The digits shards uploaded with boto3 (as `aws s3 sync` would)."""
    prefix = "shards/digits"
    for path in sorted(digit_shards.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(digit_shards).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """The shard cache of every run in this module (removed with pytest's temp folders)."""
    return tmp_path_factory.mktemp("shard-cache")


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty current directory: a run in the bucket must leave nothing in it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def config(shards: str, cache: Path, *extra: str):
    return load_config(CONFIG, [f"data.shards={shards}", f"data.cache_dir={cache}", "data.image_size=16", "model.width=16",
                                "train.batch_size=128", f"train.epochs={EPOCHS}", "method.stage1_epochs=1",
                                "method.rampup_epochs=1", "train.workers=2", "train.sync_check_every=5", *extra])


def run_url(name: str) -> str:
    return f"s3://{BUCKET}/runs/{name}-{uuid.uuid4().hex[:6]}"


def keys(s3, url: str) -> list[str]:
    """Object keys under the run URL, relative to it (directory markers left out)."""
    prefix = url.removeprefix(f"s3://{BUCKET}/") + "/"
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])
                  if not o["Key"].endswith("/"))


def read(s3, url: str, rel: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=f"{url.removeprefix(f's3://{BUCKET}/')}/{rel}")["Body"].read()


def metrics_epochs(s3, url: str) -> list[int]:
    return [json.loads(line)["epoch"] for line in read(s3, url, "metrics.jsonl").decode().splitlines()]


def final_numbers(results: dict) -> dict:
    return {split: {b: round(results[split][b]["accuracy"], 6) for b in ("student", "teacher")} for split in ("val", "test")}


def shard_gets(s3_server, since: int) -> list[str]:
    """GETs of shard files (.tar/.idx) in moto's request log after line ``since``."""
    lines = s3_server["log"].read_text().splitlines()[since:]
    return [line for line in lines if "GET" in line and (".tar " in line or ".idx " in line)]


def log_length(s3_server) -> int:
    return len(s3_server["log"].read_text().splitlines())


@pytest.fixture(scope="module")
def uninterrupted(s3, _shared_ray, shards_url, cache_dir, tmp_path_factory):
    """One clean run with run directory and shards in the bucket, started from an empty current directory."""
    from soft_dist.train.ray_trainer import run_training

    _shared_ray.start()

    cwd = tmp_path_factory.mktemp("cwd-clean")
    url = run_url("clean")
    before = os.getcwd()
    os.chdir(cwd)
    lines: list[str] = []
    try:
        results = run_training(config(shards_url, cache_dir), url, echo=lines.append)
    finally:
        os.chdir(before)
    return url, results, cwd, lines


# ----------------------------------------------------------------------------- the tests


def test_run_in_the_bucket_finishes_and_leaves_its_files_there(uninterrupted, s3):
    import torch

    from soft_dist.train.model_file import MODEL_FORMAT, load_model

    url, results, cwd, lines = uninterrupted
    names = keys(s3, url)
    for name in ("config.yaml", "noise_table.csv", "metrics.jsonl", "results.json", "model.pt"):
        assert name in names, names
    assert any(n.startswith("tensorboard/") and "events.out.tfevents" in n for n in names), names
    assert metrics_epochs(s3, url) == list(range(1, EPOCHS + 1))  # every epoch exactly once
    first = json.loads(read(s3, url, "metrics.jsonl").decode().splitlines()[0])
    assert first["train"]["steps"] == STEPS_PER_EPOCH  # so FAIL_AT_STEP below falls in the second epoch
    checkpoints = sorted({n.split("/")[1] for n in names if n.startswith("checkpoints/epoch_")})
    assert checkpoints == [f"epoch_{EPOCHS:04d}"], names  # only the newest is kept
    assert {n for n in names if n.startswith(f"checkpoints/{checkpoints[0]}/")} == {
        f"checkpoints/{checkpoints[0]}/state.pt", f"checkpoints/{checkpoints[0]}/meta.json"}

    on_bucket = json.loads(read(s3, url, "results.json"))
    assert on_bucket["epochs"] == EPOCHS and final_numbers(on_bucket) == final_numbers(results)
    assert on_bucket["throughput"]["workers"] == 2
    assert on_bucket["test"]["chosen"]["num_samples"] > 0

    model = load_model(url)  # the run directory's URL
    assert load_model(f"{url}/model.pt").meta == model.meta
    assert model.meta["num_classes"] == 10 and model.meta["image_size"] == 16
    assert model.meta["epoch"] == results["model"]["epoch"] and model.meta["branch"] == results["model"]["branch"]
    payload = torch.load(io.BytesIO(read(s3, url, "model.pt")), map_location="cpu", weights_only=True)
    assert payload["format"] == MODEL_FORMAT
    assert payload["state_dict"].keys() == model.state_dict.keys()

    # The driver printed one line per epoch, read from metrics.jsonl in the bucket while Ray trained.
    # With the default tau (relative to digits' 10 classes) there is no config note before the epochs; a
    # lock-in warning would follow its epoch's line.
    epochs = [line for line in lines if not line.startswith("lock-in warning: ")]
    assert [line.split("|")[0].strip() for line in epochs] == [f"epoch {e + 1}/{EPOCHS}" for e in range(EPOCHS)]
    assert list(cwd.iterdir()) == []  # nothing written to the local working directory


def test_the_secret_key_in_the_environment_is_in_no_file_and_no_console_line(uninterrupted, s3):
    from conftest import S3_SECRET_CANARY

    url, _, _, lines = uninterrupted
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == S3_SECRET_CANARY  # what the run's workers used
    names = keys(s3, url)
    assert names and not [n for n in names if S3_SECRET_CANARY.encode() in read(s3, url, n)]
    assert not [line for line in lines if S3_SECRET_CANARY in line]


@pytest.mark.slow
def test_resume_from_the_bucket_matches_and_reuses_the_shard_cache(uninterrupted, s3, s3_server, shards_url,
                                                                   cache_dir, workdir, ray_cluster):
    from soft_dist.train.ray_trainer import resume_training, run_training

    url = run_url("resumed")
    cfg = config(shards_url, cache_dir, f"train.fail_at_step={FAIL_AT_STEP}", "train.max_failures=0")
    with pytest.raises(Exception):
        run_training(cfg, url, echo=None)
    names = keys(s3, url)
    assert "results.json" not in names
    assert [n.split("/")[1] for n in names if n.endswith("/meta.json")] == ["epoch_0001"]  # stopped in epoch 2

    staged = [p for p in cache_dir.iterdir() if p.is_dir()]
    assert len(staged) == 1  # one URL, one staged copy, shared by every run of this module
    mtimes = {p.name: p.stat().st_mtime_ns for p in staged[0].iterdir() if p.suffix in (".tar", ".idx")}
    before = log_length(s3_server)
    results = resume_training(url, echo=None)
    assert shard_gets(s3_server, before) == []  # the shards were not fetched again
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in staged[0].iterdir() if p.suffix in (".tar", ".idx")}

    assert metrics_epochs(s3, url) == list(range(1, EPOCHS + 1))
    assert results["epochs"] == EPOCHS
    # Same seeds, same data order per epoch, full state in the checkpoint: identical on CPU.
    assert final_numbers(results) == final_numbers(uninterrupted[1])
    assert list(workdir.iterdir()) == []


def test_in_process_run_loop_with_a_bucket_run_dir(s3, shards_url, cache_dir, workdir):
    from soft_dist.train.local import fit_from_shards
    from soft_dist.train.model_file import load_model

    url = run_url("single")
    cfg = config(shards_url, cache_dir, "train.epochs=2", "train.workers=1", "data.num_threads=1")
    results = fit_from_shards(cfg, url)
    names = keys(s3, url)
    for name in ("config.yaml", "noise_table.csv", "metrics.jsonl", "results.json", "model.pt",
                 "checkpoints/epoch_0002/state.pt", "checkpoints/epoch_0002/meta.json"):
        assert name in names, names
    assert not [n for n in names if n.startswith("checkpoints/epoch_0001")]
    assert metrics_epochs(s3, url) == [1, 2] and results["epochs"] == 2
    assert json.loads(read(s3, url, "results.json"))["epochs"] == 2
    assert load_model(url).meta["image_size"] == 16
    assert list(workdir.iterdir()) == []


def test_ray_checkpoints_of_the_run_are_recognised(s3, s3_server, tmp_path):
    """Ray names a checkpoint by its path in the storage filesystem it was given ("bucket/prefix/...")."""
    from soft_dist.storage import RunStore
    from soft_dist.train.ray_trainer import _in_run

    remote = RunStore(f"s3://{BUCKET}/runs/paths/")
    assert _in_run(f"{BUCKET}/runs/paths/checkpoints/epoch_0001", remote)
    assert not _in_run(f"{BUCKET}/runs/paths/checkpoints_old/epoch_0001", remote)
    assert not _in_run(f"{BUCKET}/runs/other/checkpoints/epoch_0001", remote)
    # A URL that carries its endpoint in the query: Ray's path has no query (the old prefix test missed it).
    endpoint = s3_server["endpoint"].removeprefix("http://")
    query = RunStore(f"s3://{BUCKET}/runs/paths?scheme=http&endpoint_override={endpoint}&region=us-east-1")
    assert _in_run(f"{BUCKET}/runs/paths/checkpoints/epoch_0001", query)
    local = RunStore(tmp_path / "run")
    assert _in_run(str(tmp_path / "run" / "checkpoints" / "epoch_0000"), local)
    assert not _in_run(str(tmp_path / "elsewhere" / "epoch_0000"), local)
