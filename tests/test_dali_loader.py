"""The DALI loaders (and the torch fallback beside them) on real shards of real digits, decoded by real
DALI and torchvision: the issue's "must show" list."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shard_fixtures import jpeg_bytes, write_digit_shards
from soft_dist.config import AugmentConfig, ConfigError, DataConfig, from_dict
from soft_dist.shard.digits import load_digits_rgb
from soft_dist.data.loader import EpochLoader, EvalBatch, TwoViewBatch, build_eval_loader, build_train_loader
from soft_dist.data.tarindex import load_sample_table
from soft_dist.data.view_params import draw_view_params, used_fields

N_TRAIN, N_VAL, FIRST_IDX, BATCH = 70, 20, 1000, 16


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    # 70 samples in shards of 16: the last shard is partial and ranks get 35 each (not a multiple of 16).
    return write_digit_shards(tmp_path_factory.mktemp("shards"), {"train": N_TRAIN, "val": N_VAL}, first_idx=FIRST_IDX)


def cfg(loader="dali", size=32, **augment) -> DataConfig:
    return DataConfig(image_size=size, loader=loader, num_threads=2, augment=AugmentConfig(**augment))


def expected_label(idx: torch.Tensor) -> np.ndarray:
    _, labels = load_digits_rgb(8)
    return labels[idx.numpy() - FIRST_IDX]


def first(loader, epoch=0):
    return next(iter(loader.epoch(epoch)))


def collect(loader, epoch=0) -> list:
    return list(loader.epoch(epoch))


# ----------------------------------------------------------------------------- training views


def test_two_views_differ_label_and_idx_agree(shards):
    loader = build_train_loader(shards, "train", cfg(), BATCH, seed=1)
    assert isinstance(loader, EpochLoader)
    b = first(loader)
    assert isinstance(b, TwoViewBatch)
    assert b.view_s.shape == b.view_t.shape == (BATCH, 3, 32, 32) and b.view_s.dtype == torch.float32
    assert b.label.dtype == b.idx.dtype == torch.int64 and b.valid.dtype == torch.bool
    assert b.label.shape == b.idx.shape == b.valid.shape == (BATCH,)
    # Every row's pair of views differs (independent crops/flips/rotations/jitter of the same image) ...
    per_row = (b.view_s - b.view_t).abs().flatten(1).mean(1)
    assert (per_row > 0.02).all(), per_row
    # ... while label and idx are the shard's, row by row.
    np.testing.assert_array_equal(b.label.numpy(), expected_label(b.idx))
    loader.close()


def test_views_are_normalised_rgb_and_match_the_config_size(shards):
    # Shards hold 32 px images; outputs follow data.image_size up or down.
    for size in (24, 48):
        loader = build_train_loader(shards, "train", cfg(size=size), BATCH, seed=0)
        b = first(loader)
        assert b.view_s.shape == (BATCH, 3, size, size)
        loader.close()
    # No augmentation at all apart from the crop: the mean over pixels is near the normalised image mean.
    plain = cfg(scale_min=1.0, scale_max=1.0, ratio_min=1.0, ratio_max=1.0, flip=False, rotate_degrees=0.0,
                color_jitter=0.0, erasing_prob=0.0)
    loader = build_train_loader(shards, "train", plain, BATCH, seed=0)
    b = first(loader)
    images, _ = load_digits_rgb(32)
    raw = images[b.idx.numpy() - FIRST_IDX].astype(np.float32) / 255.0  # [B, H, W, 3]
    mean, std = np.array(plain.mean), np.array(plain.std)
    want = torch.from_numpy(((raw - mean) / std).transpose(0, 3, 1, 2)).float()
    assert (b.view_s - want).abs().mean() < 0.1  # JPEG error only
    torch.testing.assert_close(b.view_s, b.view_t)  # nothing random left: both views equal
    loader.close()


def test_same_seed_same_first_batch_next_epoch_other_order(shards):
    a = build_train_loader(shards, "train", cfg(), BATCH, seed=7)
    b = build_train_loader(shards, "train", cfg(), BATCH, seed=7)  # a "restarted" job
    a0, b0 = first(a, 0), first(b, 0)
    torch.testing.assert_close(a0.idx, b0.idx)
    torch.testing.assert_close(a0.view_s, b0.view_s)
    torch.testing.assert_close(a0.view_t, b0.view_t)
    # Epoch 0 was abandoned after one batch: epoch 1 must not see its prefetched leftovers.
    e1 = collect(a, 1)
    fresh = collect(build_train_loader(shards, "train", cfg(), BATCH, seed=7), 1)
    for x, y in zip(e1, fresh):
        torch.testing.assert_close(x.idx, y.idx)
        torch.testing.assert_close(x.view_t, y.view_t)
    # Resume: epoch 3 right after a full epoch 1 (pipeline reused) equals epoch 3 in a new loader.
    torch.testing.assert_close(first(a, 3).view_s, first(b, 3).view_s)
    assert not torch.equal(first(a, 1).idx, a0.idx)
    assert not torch.equal(first(build_train_loader(shards, "train", cfg(), BATCH, seed=8), 0).idx, a0.idx)
    a.close()
    b.close()


def test_two_ranks_cover_the_epoch_once_with_equal_lengths(shards):
    loaders = [build_train_loader(shards, "train", cfg(), BATCH, rank=r, world_size=2, seed=3) for r in range(2)]
    assert len(loaders[0]) == len(loaders[1]) == 3  # ceil(35 / 16)
    assert [l.num_samples for l in loaders] == [35, 35]
    seen, per_rank = [], []
    for loader in loaders:
        batches = collect(loader, epoch=2)
        assert len(batches) == len(loader)
        assert all(b.idx.shape == (BATCH,) for b in batches)
        ids = torch.cat([b.idx[b.valid] for b in batches]).tolist()
        assert len(ids) == loader.num_samples
        seen += ids
        per_rank.append(set(ids))
        # Padding rows repeat real samples of the same rank.
        pad = torch.cat([b.idx[~b.valid] for b in batches]).tolist()
        assert len(pad) == 3 * BATCH - 35 and set(pad) <= set(ids)
    assert sorted(seen) == list(range(FIRST_IDX, FIRST_IDX + N_TRAIN))
    assert not per_rank[0] & per_rank[1]
    # The next epoch reshuffles globally: rank 0 gets other samples.
    nxt = {i for b in loaders[0].epoch(3) for i in b.idx[b.valid].tolist()}
    assert nxt != per_rank[0]
    for loader in loaders:
        loader.close()


def reference_view(image: np.ndarray, p: dict, row: int, data_cfg: DataConfig) -> np.ndarray:
    """numpy version of dali_augment.train_view for rotation on, jitter off: uint8 [h, w, 3] -> [3, S, S]."""
    size = data_cfg.image_size
    (y, x), (h, w) = p["crop_start"][row], p["crop_shape"][row]
    crop = image[y : y + h, x : x + w].astype(np.float64)
    inverse = np.linalg.inv(np.vstack([p["matrix"][row], [0.0, 0.0, 1.0]]))
    ys, xs = np.mgrid[0:size, 0:size] + 0.5  # output pixel centres
    src = inverse @ np.stack([xs.ravel(), ys.ravel(), np.ones(size * size)])
    sx, sy = np.floor(src[0]).astype(int), np.floor(src[1]).astype(int)  # nearest neighbour
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    out = np.zeros((size * size, 3))
    out[inside] = crop[sy[inside], sx[inside]]
    out = out.reshape(size, size, 3)
    (ey, ex), (eh, ew) = p["erase_anchor"][row] * size, p["erase_shape"][row] * size
    out[int(ey) : int(ey + eh), int(ex) : int(ex + ew)] = np.round(255 * np.array(data_cfg.mean))  # DALI floors
    if p["mirror"][row]:
        out = out[:, ::-1]
    return ((out / 255 - np.array(data_cfg.mean)) / np.array(data_cfg.std)).transpose(2, 0, 1)


def test_train_view_carries_out_the_fed_parameters():
    # A non-square photo, so that a swapped height/width would show; rotation and erasing always on.
    import skimage.data
    from nvidia.dali.pipeline import Pipeline
    from torchvision.io import decode_jpeg

    from soft_dist.data import dali

    photo = np.ascontiguousarray(skimage.data.astronaut()[::4, ::3][:96, :80])
    jpeg = np.frombuffer(jpeg_bytes(photo, quality=95), dtype=np.uint8)
    decoded = decode_jpeg(torch.from_numpy(jpeg.copy())).permute(1, 2, 0).numpy()  # libjpeg-turbo, as DALI
    data_cfg = cfg(size=48, rotate_degrees=30, erasing_prob=1.0, scale_min=0.5)
    rows, fields = 6, used_fields(data_cfg.augment)
    rng = np.random.default_rng(0)
    views = [draw_view_params(rng, np.array([[96, 80]] * rows), data_cfg.augment, 48) for _ in range(2)]

    def source(info):
        if info.iteration:
            raise StopIteration
        meta = (np.zeros(rows, np.int64), np.arange(rows, dtype=np.int64), np.ones(rows, bool))
        return ([jpeg] * rows, *meta, *[v[f] for v in views for f in fields])

    pipe = Pipeline(batch_size=rows, num_threads=1, device_id=None)
    with pipe:
        pipe.set_outputs(*dali.graph(source, data_cfg, train=True))
    pipe.build()
    out = pipe.run()
    for v, params in enumerate(views):
        got = np.array(out[v].as_tensor())
        for row in range(rows):
            want = reference_view(decoded, params, row, data_cfg)
            off = np.abs(got[row] - want).max(0) > 0.05  # a pixel differs beyond decoder rounding
            # Exact up to the rare nearest-neighbour tie that float32 rounding may break the other way.
            assert off.mean() < 0.005, (v, row, off.mean())
            # The erased box holds the mean colour: 0 after normalisation, to within uint8 rounding.
            erased = (np.abs(got[row]) < 0.01).all(0).mean()
            assert erased >= 0.9 * params["erase_shape"][row].prod(), (v, row, erased)


# ----------------------------------------------------------------------------- evaluation view


def test_eval_view_is_deterministic_and_in_split_order(shards):
    loader = build_eval_loader(shards, "val", cfg(), 8, rank=1, world_size=2)
    e0, e1 = collect(loader, 0), collect(loader, 5)
    assert isinstance(e0[0], EvalBatch) and e0[0].image.shape == (8, 3, 32, 32)
    for a, b in zip(e0, e1):
        torch.testing.assert_close(a.image, b.image, rtol=0, atol=0)
        torch.testing.assert_close(a.idx, b.idx)
    ids = torch.cat([b.idx[b.valid] for b in e0]).tolist()
    assert ids == list(range(FIRST_IDX + N_TRAIN + 1, FIRST_IDX + N_TRAIN + N_VAL, 2))  # rank 1 of 2
    loader.close()


def test_eval_centre_crop_fraction(shards):
    full = first(build_eval_loader(shards, "val", cfg(), 8))
    tight = first(build_eval_loader(shards, "val", dataclasses.replace(cfg(), eval_crop_fraction=0.5), 8))
    assert full.image.shape == tight.image.shape
    assert (full.image - tight.image).abs().mean() > 0.05  # a 2x zoom on the centre


# ----------------------------------------------------------------------------- DALI vs torch


def test_dali_and_torch_loaders_agree(shards):
    d = build_train_loader(shards, "train", cfg("dali"), BATCH, rank=0, world_size=2, seed=4)
    t = build_train_loader(shards, "train", cfg("torch"), BATCH, rank=0, world_size=2, seed=4)
    assert len(d) == len(t) and d.num_samples == t.num_samples
    db, tb = collect(d, 1), collect(t, 1)
    for x, y in zip(db, tb):  # the same plan: the same rows in the same order
        torch.testing.assert_close(x.idx, y.idx)
        torch.testing.assert_close(x.label, y.label)
        torch.testing.assert_close(x.valid, y.valid)
        assert not torch.equal(y.view_s, y.view_t)
    dv = torch.cat([b.view_s for b in db] + [b.view_t for b in db])
    tv = torch.cat([b.view_s for b in tb] + [b.view_t for b in tb])
    dims = (0, 2, 3)  # per-channel statistics of the augmented views
    assert (dv.mean(dims) - tv.mean(dims)).abs().max() < 0.08, (dv.mean(dims), tv.mean(dims))
    assert ((dv.std(dims) / tv.std(dims)) - 1).abs().max() < 0.08, (dv.std(dims), tv.std(dims))
    # The deterministic views differ only by the JPEG decoders' rounding.
    de = collect(build_eval_loader(shards, "val", cfg("dali"), 8))
    te = collect(build_eval_loader(shards, "val", cfg("torch"), 8))
    for x, y in zip(de, te):
        torch.testing.assert_close(x.idx, y.idx)
        assert (x.image - y.image).abs().mean() < 0.01
    d.close()
    t.close()


def test_torch_fallback_is_deterministic_per_seed_and_epoch(shards):
    a = build_train_loader(shards, "train", cfg("torch"), BATCH, seed=2)
    b = build_train_loader(shards, "train", cfg("torch"), BATCH, seed=2)
    x, y = first(a, 1), first(b, 1)
    torch.testing.assert_close(x.view_s, y.view_s)
    torch.testing.assert_close(x.view_t, y.view_t)
    assert not torch.equal(x.view_s, x.view_t)
    a.close()
    b.close()


# ----------------------------------------------------------------------------- index files, GPU graph, config


def test_index_files_give_the_same_table(shards, tmp_path):
    import shutil

    from wds2idx import IndexCreator

    # The project's writer already puts index files beside its shards: compare a copy without them
    # against a copy indexed by DALI's own wds2idx tool.
    plain_dir = Path(shutil.copytree(shards, tmp_path / "plain"))
    for index in plain_dir.glob("*.idx"):
        index.unlink()
    copy = Path(shutil.copytree(plain_dir, tmp_path / "indexed"))
    for tar in copy.glob("train-*.tar"):
        with IndexCreator(str(tar), str(tar.with_suffix(".idx")), verbose=False) as creator:
            creator.create_index()
    plain, indexed = load_sample_table(plain_dir, "train"), load_sample_table(copy, "train")
    assert not plain.used_index_files and indexed.used_index_files
    for name in ("shard", "offset", "size", "label", "idx"):
        np.testing.assert_array_equal(getattr(plain, name), getattr(indexed, name))
    assert bytes(indexed.jpeg(5)) == bytes(plain.jpeg(5)) and bytes(plain.jpeg(5))[:2] == b"\xff\xd8"
    # An index file of another format version is not trusted: the tar is scanned instead.
    next(copy.glob("train-*.idx")).write_text("v1.1 16\n")
    assert not load_sample_table(copy, "train").used_index_files


def test_mixed_gpu_graph_is_constructed_without_a_gpu():
    from nvidia.dali.pipeline import Pipeline

    from soft_dist.data import dali

    data_cfg = cfg()
    pipe = Pipeline(batch_size=4, num_threads=1, device_id=0)
    with pipe:
        outputs = dali.graph(lambda info: None, data_cfg, train=True, device="cuda")
        pipe.set_outputs(*outputs)
    assert len(outputs) == len(dali.TRAIN_OUTPUTS)
    assert all(o.device == "gpu" for o in outputs)
    with pipe:
        cpu_outputs = dali.graph(lambda info: None, data_cfg, train=False, device="cpu")
    assert all(o.device == "cpu" for o in cpu_outputs)
    # The GPU outputs are HWC; the loader hands them on as NCHW views in channels_last format.
    hwc = torch.arange(2 * 5 * 4 * 3, dtype=torch.float32).reshape(2, 5, 4, 3)
    nchw = dali._as_nchw(hwc, "cuda")
    assert nchw.shape == (2, 3, 5, 4) and nchw.is_contiguous(memory_format=torch.channels_last)
    assert nchw[1, 2, 3, 1] == hwc[1, 3, 1, 2]
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            dali.make_pipeline(lambda info: None, 4, data_cfg, train=True, device="cuda", device_id=0).build()


def test_bad_device_and_config_values(shards):
    with pytest.raises(ValueError, match="device"):
        build_train_loader(shards, "train", cfg(), BATCH, seed=0, device="tpu")
    with pytest.raises(ConfigError, match="rotate_interpolation"):
        from_dict({"data": {"augment": {"rotate_interpolation": "cubic"}}})
    with pytest.raises(ConfigError, match="eval_crop_fraction"):
        from_dict({"data": {"eval_crop_fraction": 0.0}})


def test_bench_pipeline_cli_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "soft_dist", "bench", "pipeline", "--num-samples", "24", "--image-size", "32",
           "--batch-size", "8", "--repeats", "5", "--json", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=240)
    result = json.loads(out.read_text())
    for key in ("dali", "torch"):
        assert result[key]["images_per_s"] > 0 and result[key]["epoch"]["repeats"] == 5
    assert 0 < result["dali"]["feed_ms_per_batch"] < 1e3
    assert result["ratio_dali_over_torch"] == pytest.approx(
        result["dali"]["images_per_s"] / result["torch"]["images_per_s"]
    )


@pytest.mark.parametrize("kind", ["dali", "torch"])
def test_an_epoch_resumed_mid_way_yields_the_rest_of_the_uninterrupted_epoch(shards, kind):
    """epoch(e, start) after 1 step of 2 ranks: the same batches (pixels of both views, labels, idx, valid)
    as steps 2.. of the whole epoch, the last one's padding included; steps(start) counts them."""
    whole, rest = (build_train_loader(shards, "train", cfg(kind), BATCH, rank=1, world_size=2, seed=4) for _ in "ab")
    tail = collect(whole, 3)[1:]
    resumed = list(rest.epoch(3, start=BATCH * 2))
    assert len(resumed) == len(tail) == rest.steps(BATCH * 2) == len(rest) - 1
    for a, b in zip(resumed, tail):
        for field in ("view_s", "view_t", "label", "idx", "valid"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not bool(tail[-1].valid.all())  # the comparison covered padding rows


def test_the_sample_table_reads_any_order_with_few_files_open(shards, monkeypatch):
    """JPEG bytes come from positioned reads, not mapped files (whose touched pages count in the worker's
    RSS); at most OPEN_SHARDS files stay open, the least recently used closed first."""
    import tarfile

    from soft_dist.data import tarindex

    monkeypatch.setattr(tarindex, "OPEN_SHARDS", 2)
    table = load_sample_table(shards, "train")
    assert len(table.paths) >= 4
    expected = {}
    for path in table.paths:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg"):
                    expected[member.name] = tar.extractfile(member).read()
    read = {int(p): table.jpeg(int(p)).tobytes() for p in np.random.default_rng(0).permutation(len(table))}
    assert len(table._files) <= 2
    assert sorted(read.values()) == sorted(expected.values())
    table.close()
    assert not table._files
