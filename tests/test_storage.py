"""RunStore and shard staging against a local folder and a real S3 endpoint (moto's HTTP server, see the
`s3_server` fixture in conftest.py), read back with boto3, Ray Train and DALI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from soft_dist.config import DataConfig
from soft_dist.data.format import MANIFEST_NAME, ManifestError, load_manifest
from soft_dist.data.stage import local_shards
from soft_dist.storage import RunStore, is_remote

BUCKET = "soft-dist-test"
CACHE_GB = DataConfig().cache_max_gb  # the shard cache bound of the default config (data.cache_max_gb)


@pytest.fixture(scope="module")
def s3(s3_server):
    """A boto3 client of the test endpoint, with the test bucket created."""
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def upload(s3, folder: Path, prefix: str) -> str:
    """Upload ``folder``'s files with boto3 (as `aws s3 sync` would); returns the s3:// URL."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def keys(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> RunStore:
    if request.param == "local":
        return RunStore(tmp_path / "run")
    request.getfixturevalue("s3")
    return RunStore(f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/run/")


# ----------------------------------------------------------------------------- RunStore


def test_is_remote_and_locations(tmp_path, monkeypatch):
    assert is_remote("s3://b/x") and is_remote("gs://b/x") and is_remote("S3://b")
    assert not is_remote("file:///tmp/x") and not is_remote("/tmp/x") and not is_remote(tmp_path) and not is_remote("a/b")
    monkeypatch.chdir(tmp_path)
    local = RunStore("rel/dir/")
    assert local.is_local and local.location == str(tmp_path / "rel" / "dir")
    assert local.path("a/b.txt") == str(tmp_path / "rel" / "dir" / "a" / "b.txt") and local.path("") == local.location
    assert RunStore(f"file://{tmp_path}").location == str(tmp_path)
    remote = RunStore("s3://bucket/runs/x/")
    assert not remote.is_local and remote.location == "s3://bucket/runs/x"
    assert remote.path("ray/epoch_0000") == "s3://bucket/runs/x/ray/epoch_0000"  # not s3:/bucket/...


def test_write_read_and_replace(store):
    store.write_text("config.yaml", "a: 1\n")
    store.write_bytes("deep/er/blob.bin", b"\x00\x01")  # parent folders are created
    assert store.read_text("config.yaml") == "a: 1\n" and store.read_bytes("deep/er/blob.bin") == b"\x00\x01"
    store.write_text("config.yaml", "a: 2\n")
    assert store.read_text("config.yaml") == "a: 2\n"
    assert store.listdir() == ["config.yaml", "deep"]  # no temp files left beside them
    with pytest.raises(FileNotFoundError, match=store.path("missing.json").replace(".", r"\.")):
        store.read_bytes("missing.json")


def test_listdir_exists_delete(store):
    for rel in ("a.txt", "sub/b.txt", "sub/deep/c.txt"):
        store.write_text(rel, rel)
    assert store.listdir() == ["a.txt", "sub"] and store.listdir("sub") == ["b.txt", "deep"]
    assert store.listdir("nope") == []
    assert store.exists("a.txt") and store.exists("sub") and store.exists("sub/deep/c.txt") and not store.exists("x")
    store.delete("sub/b.txt")
    assert store.listdir("sub") == ["deep"]
    store.delete("sub")
    assert not store.exists("sub/deep/c.txt") and store.listdir("sub") == []
    store.delete("sub")  # missing is fine
    store.delete("never/was")
    assert store.read_text("a.txt") == "a.txt"


def test_put_and_get_folder_and_files(store, tmp_path):
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    (src / "model.pt").write_bytes(os.urandom(3000))
    (src / "inner" / "state.json").write_text("{}")
    store.put_folder(src, "ckpt/epoch_0001")
    assert store.listdir("ckpt/epoch_0001") == ["inner", "model.pt"]
    store.get_folder("ckpt/epoch_0001", tmp_path / "back")
    assert (tmp_path / "back" / "model.pt").read_bytes() == (src / "model.pt").read_bytes()
    assert (tmp_path / "back" / "inner" / "state.json").read_text() == "{}"

    # A second put replaces the folder: files that are gone from the source are gone from rel.
    shutil.rmtree(src / "inner")
    (src / "model.pt").write_bytes(b"new")
    store.put_folder(src, "ckpt/epoch_0001")
    assert store.listdir("ckpt/epoch_0001") == ["model.pt"]
    assert store.read_bytes("ckpt/epoch_0001/model.pt") == b"new" and not store.exists("ckpt/epoch_0001/inner/state.json")
    assert store.listdir("ckpt") == ["epoch_0001"]  # locally: no hidden temp siblings left

    store.upload_file(src / "model.pt", "single/model.pt")
    store.download_file("single/model.pt", tmp_path / "dl" / "m.pt")
    assert (tmp_path / "dl" / "m.pt").read_bytes() == b"new" and os.listdir(tmp_path / "dl") == ["m.pt"]


def test_remote_writes_are_plain_objects(s3):
    store = RunStore(f"s3://{BUCKET}/plain")
    store.write_text("a/b.txt", "x")
    assert keys(s3, "plain/") == ["plain/a/b.txt"]
    assert s3.get_object(Bucket=BUCKET, Key="plain/a/b.txt")["Body"].read() == b"x"


@pytest.mark.ray
def test_ray_train_checkpoints_into_the_bucket(s3, ray_cluster):
    import ray
    from ray.train import Checkpoint, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from soft_dist.train.ray_trainer import sigint_handler_restored

    def train_fn(config):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            Path(d, "state.txt").write_text("epoch 0")
            ray.train.report({"epoch": 0}, checkpoint=Checkpoint.from_directory(d), checkpoint_dir_name="epoch_0000")

    store = RunStore(f"s3://{BUCKET}/raytest/run")
    storage_path, storage_fs = store.ray_storage()
    trainer = TorchTrainer(
        train_fn,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=storage_path, storage_filesystem=storage_fs, name="checkpoints"),
    )
    with sigint_handler_restored():  # else the handler fit() installs keeps the run's controller alive
        result = trainer.fit()
    assert result.checkpoint is not None
    assert "raytest/run/checkpoints/epoch_0000/state.txt" in keys(s3, "raytest/run/")
    assert store.read_text("checkpoints/epoch_0000/state.txt") == "epoch 0"


# ----------------------------------------------------------------------------- shard staging


@pytest.fixture(scope="module")
def s3_shards(s3, digit_shards) -> str:
    return upload(s3, digit_shards, "shards/digits")


def moto_requests(s3_server) -> list[str]:
    return s3_server["log"].read_text().splitlines()


def set_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".tar", ".idx", ".json"))


def test_local_path_is_returned_unchanged(digit_shards):
    assert local_shards(str(digit_shards), None, CACHE_GB) == digit_shards
    with pytest.raises(ManifestError, match="stage it first"):
        load_manifest("s3://bucket/shards/x")


def test_staged_copy_is_identical_and_reused(s3_shards, digit_shards, s3_server, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    staged = local_shards(s3_shards, str(cache), CACHE_GB)
    assert staged.parent == cache and load_manifest(staged).dataset == load_manifest(digit_shards).dataset
    originals = sorted(p.name for p in digit_shards.iterdir() if p.is_file())
    assert sorted(p.name for p in staged.iterdir() if not p.name.startswith(".")) == originals
    assert any(name.endswith(".idx") for name in originals)
    for name in originals:
        assert (staged / name).read_bytes() == (digit_shards / name).read_bytes(), name

    before = len(moto_requests(s3_server))
    mtimes = {p.name: p.stat().st_mtime_ns for p in staged.iterdir() if p.suffix in (".tar", ".idx")}
    assert local_shards(s3_shards + "/", str(cache), CACHE_GB) == staged  # same URL, same folder
    new = moto_requests(s3_server)[before:]
    assert new and not [line for line in new if "GET" in line and (".tar " in line or ".idx " in line)], new
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in staged.iterdir() if p.suffix in (".tar", ".idx")}

    # The default cache folder comes from $SOFT_DIST_CACHE.
    monkeypatch.setenv("SOFT_DIST_CACHE", str(cache))
    assert local_shards(s3_shards, None, CACHE_GB) == staged


def test_corrupt_shard_is_named_and_not_kept(s3, digit_shards, tmp_path):
    url = upload(s3, digit_shards, "shards/corrupt")
    shard = load_manifest(digit_shards).split("val").shards[1]
    data = bytearray((digit_shards / shard.name).read_bytes())
    data[1000] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=f"shards/corrupt/{shard.name}", Body=bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(ManifestError) as err:
        local_shards(url, str(cache), CACHE_GB)
    assert f"{url}/{shard.name}" in str(err.value) and shard.sha256 in str(err.value)
    (staged,) = [p for p in cache.iterdir() if p.is_dir()]
    assert not (staged / shard.name).exists() and not list(staged.glob("*.part")) and not (staged / MANIFEST_NAME).exists()

    # Repaired in the bucket: the next call stages the set (and only fetches what it lacks).
    s3.upload_file(str(digit_shards / shard.name), BUCKET, f"shards/corrupt/{shard.name}")
    assert local_shards(url, str(cache), CACHE_GB) == staged
    assert (staged / shard.name).read_bytes() == (digit_shards / shard.name).read_bytes()


def test_eviction_keeps_the_cache_under_its_bound(s3, digit_shards, tmp_path):
    one_set = set_bytes(digit_shards)
    old_url, new_url = upload(s3, digit_shards, "shards/old"), upload(s3, digit_shards, "shards/new")
    cache = tmp_path / "cache"
    bound_gb = 1.5 * one_set / 1e9  # room for one set, not two

    # Staged by a process that has ended (a live one would hold the set and be skipped).
    code = f"from soft_dist.data.stage import local_shards; local_shards({old_url!r}, {str(cache)!r}, {bound_gb!r})"
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())
    (old,) = [p for p in cache.iterdir() if p.is_dir()]

    new = local_shards(new_url, cache_dir=str(cache), max_gb=bound_gb)
    assert new != old and not old.exists()
    assert [p for p in cache.iterdir() if p.is_dir()] == [new]
    assert sum(set_bytes(p) for p in cache.iterdir() if p.is_dir()) <= bound_gb * 1e9

    with pytest.raises(ValueError, match="more than the shard cache's bound"):
        local_shards(old_url, cache_dir=str(cache), max_gb=one_set / 2 / 1e9)
    assert new.exists()


def test_shard_loaders_read_an_s3_url(s3_shards, tmp_path):
    from soft_dist.config import load_config
    from soft_dist.data.run_loaders import shard_loaders

    cfg = load_config(None, [f"data.shards={s3_shards}", f"data.cache_dir={tmp_path / 'cache'}", "data.cache_max_gb=1",
                             "data.image_size=32", "data.num_threads=1", "data.loader=dali", "train.batch_size=16"])
    loaders = shard_loaders(cfg, diagnostics=False)
    try:
        batch = next(iter(loaders.train.epoch(0)))
        assert batch.view_s.shape == (16, 3, 32, 32) and batch.label.shape == (16,)
        assert 0 <= int(batch.label.min()) and int(batch.label.max()) < 10
    finally:
        loaders.close()


def test_two_processes_download_each_shard_once(s3, digit_shards, s3_server, tmp_path):
    url = upload(s3, digit_shards, "shards/race")
    cache = tmp_path / "cache"
    before = len(moto_requests(s3_server))
    code = f"from soft_dist.data.stage import local_shards; print(local_shards({url!r}, {str(cache)!r}, {CACHE_GB!r}))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outputs[0] == outputs[1]
    tar_gets = [line for line in moto_requests(s3_server)[before:] if "GET" in line and "/shards/race/" in line and ".tar " in line]
    num_tars = len([p for p in digit_shards.iterdir() if p.suffix == ".tar"])
    # Every shard fetched, and only once: these small objects come in one GET each.
    assert len({line.split("/shards/race/")[1].split()[0] for line in tar_gets}) == num_tars
    assert len(tar_gets) == num_tars, tar_gets


def test_noise_table_from_an_s3_url(s3_shards, digit_shards, tmp_path):
    from soft_dist.config import ConfigError, load_config
    from soft_dist.noise.setup import make_noise_table

    cfg = load_config(None, [f"data.shards={s3_shards}", f"data.cache_dir={tmp_path / 'cache'}",
                             "noise.kind=symmetric", "noise.rate=0.2"])
    table, num_classes = make_noise_table(cfg)
    manifest = load_manifest(digit_shards)
    assert num_classes == 10
    assert len(table.idx) == manifest.split("train").num_samples + manifest.split("val").num_samples
    with pytest.raises(ConfigError, match="cache_max_gb"):
        load_config(None, ["data.cache_max_gb=0"])


CANARY = "canarySECRET42"


@pytest.mark.parametrize("args", [
    ["train", "--config", "digits_cpu", "--run-dir", f"s3://AKIAX:{CANARY}@bucket/run"],
    ["train", "--config", "digits_cpu", "--run-dir", "RUN", f"data.shards=s3://AKIAX:{CANARY}@bucket/shards"],
    ["train", "--config", "digits_cpu", "--run-dir", "RUN",
     f"data.shards=https://bucket.s3.amazonaws.com/shards?X-Amz-Credential=AKIAX&X-Amz-Signature={CANARY}"],
    ["eval", "--shards", "SHARDS", f"s3://AKIAX:{CANARY}@bucket/run"],
    ["eval", "--shards", f"s3://AKIAX:{CANARY}@bucket/shards", "MODEL"],
    ["export", "--out", "OUT", f"s3://AKIAX:{CANARY}@bucket/run"],
    ["audit", "--out", "OUT", f"s3://AKIAX:{CANARY}@bucket/run"],
    ["shard", "--layout", "digits", "--out", f"s3://AKIAX:{CANARY}@bucket/shards"],
], ids=["train-run-dir", "train-shards", "train-presigned", "eval-model", "eval-shards", "export", "audit", "shard"])
def test_a_url_with_credentials_is_refused_before_anything_is_written(args, reference_run, digit_shards, tmp_path,
                                                                       monkeypatch, capsys):
    from soft_dist.cli import main

    monkeypatch.chdir(tmp_path)
    places = {"RUN": str(tmp_path / "run"), "SHARDS": str(digit_shards), "MODEL": str(reference_run),
              "OUT": str(tmp_path / "out")}
    assert main([places.get(a, a) for a in args]) == 2
    out, err = capsys.readouterr()
    assert "carries credentials" in err and "AWS_ACCESS_KEY_ID" in err
    assert CANARY not in out + err and "AKIAX" not in out + err  # the error shows the URL redacted
    assert list(tmp_path.iterdir()) == []  # no run directory, export or cache was started
