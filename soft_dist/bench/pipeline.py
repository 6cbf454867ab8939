"""`soft-dist bench pipeline`: two-view training throughput of the DALI CPU loader vs the torch loader.

Both read the same shards through the same epoch plan; a timed call is one full epoch of
``build_train_loader(...).epoch(e)`` (every sample decoded once and augmented twice), so images/s counts
samples, each delivered as two views. The loaders' epochs alternate (bench.median_times_interleaved) so
that load from other processes on a shared machine falls on both alike. Without ``--shards`` a temporary
shard set is written first: 256x256 JPEG crops cut from scikit-image's real photographs, so that decoding
costs what it does on real faces rather than on flat synthetic images.

The DALI loader feeds JPEG bytes and augmentation parameters from Python through external_source (for
the global per-epoch shuffle); ``dali.feed_ms_per_batch`` reports what that Python side costs per batch.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from soft_dist.bench.harness import median_times_interleaved
from soft_dist.config import AugmentConfig, DataConfig
from soft_dist.data.format import load_manifest

# --augment: AugmentConfig overrides.
AUGMENT_PRESETS = {
    "default": {},
    "crop_flip": dict(rotate_degrees=0.0, color_jitter=0.0, erasing_prob=0.0),
    "jitter": dict(color_jitter=0.2),  # what colour jitter costs: DALI's CPU colour twist is slow
}

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
CROP = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, default=None, help="shard folder (default: write temporary photo shards)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="DALI threads = torch DataLoader workers")
    parser.add_argument("--num-samples", type=int, default=512, help="samples in the temporary shards")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--augment", choices=sorted(AUGMENT_PRESETS), default="default",
        help="default: AugmentConfig's defaults (crop, flip, rotation, erasing; no colour jitter); "
        "crop_flip: random resized crop + flip only, the augmentation of the paper's section 4.2; "
        "jitter: the defaults plus colour jitter 0.2",
    )


def write_photo_shards(out: Path, num_samples: int, seed: int = 0, shard_size: int = 128) -> Path:
    """Write a 'train' split of ``num_samples`` random 256x256 crops (random flips) of real photos."""
    import io

    import skimage.data
    from PIL import Image

    from soft_dist.shard.writer import Sample, write_manifest, write_split

    rng = np.random.default_rng(seed)
    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    samples = []
    for i in range(num_samples):
        label = i % len(photos)
        photo = photos[label]
        y = rng.integers(0, photo.shape[0] - CROP + 1)
        x = rng.integers(0, photo.shape[1] - CROP + 1)
        crop = photo[y : y + CROP, x : x + CROP]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(crop)).save(buf, format="JPEG", quality=90)
        samples.append(Sample(idx=i, label=label, jpeg=buf.getvalue(), meta={"photo": PHOTOS[label]}))
    shards = write_split(out, "train", samples, shard_size)
    counts = Counter(PHOTOS[s.label] for s in samples)
    split = {"num_samples": num_samples, "class_counts": dict(counts), "shards": shards}
    write_manifest(out, {"dataset": "skimage-photos", "classes": list(PHOTOS), "splits": {"train": split}})
    return out


def _epoch_fn(loader):
    """One full epoch per call, a new epoch number each time, as in training."""
    epochs = iter(range(10**6))

    def one_epoch():
        for _ in loader.epoch(next(epochs)):
            pass

    return one_epoch


def run(args: argparse.Namespace) -> dict:
    from soft_dist.data.loader import build_train_loader

    with tempfile.TemporaryDirectory(prefix="soft-dist-bench-") as tmp:
        shards = args.shards or write_photo_shards(Path(tmp), args.num_samples, args.seed)
        num_samples = load_manifest(shards).split(args.split).num_samples
        result: dict = {
            "shards": str(args.shards) if args.shards else f"temporary: {num_samples} JPEG crops {CROP}x{CROP} of skimage photos",
            "image_size": args.image_size, "batch_size": args.batch_size, "threads": args.threads,
            "num_samples": num_samples, "views_per_image": 2, "augment": args.augment,
        }
        augment = AugmentConfig(**AUGMENT_PRESETS[args.augment])
        loaders, fns = [], {}
        # The torch loader runs first: its worker processes are forked before any DALI thread exists.
        for name in ("torch", "dali"):
            cfg = DataConfig(image_size=args.image_size, loader=name, num_threads=args.threads, augment=augment)
            loaders.append(build_train_loader(shards, args.split, cfg, args.batch_size, seed=args.seed))
            fns[name] = _epoch_fn(loaders[-1])
        timings = median_times_interleaved(fns, repeats=args.repeats, warmup=1)
        feed_ms = loaders[1].feed_ms_per_batch
        for loader in loaders:
            loader.close()
    for name, timing in timings.items():
        result[name] = {"images_per_s": num_samples / timing["median_s"], "epoch": timing}
    result["dali"]["feed_ms_per_batch"] = feed_ms
    result["ratio_dali_over_torch"] = result["dali"]["images_per_s"] / result["torch"]["images_per_s"]
    return result
