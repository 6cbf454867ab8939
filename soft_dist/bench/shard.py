"""`soft-dist bench shard`: sharding throughput in images/s, with and without MTCNN alignment, for 1 and
more worker processes.

Input: real LFW faces from scikit-image (25x25), upscaled to ``--source-size`` and saved as JPEGs in an
imagefolder, with mirrored copies to reach ``--num-images``. Each timed call is a full, fresh
``build_shards`` (read, detect, warp, encode, write, manifest), so process start-up and detector loading
per worker are included: that is what a user pays per run. One process runs in the driver and keeps
its detector between repeats; more processes start a fresh pool (and one detector each) per run.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--num-images", type=int, default=1000,
                        help="images per run (default 1000: at 200, starting the worker pool weighs as much as the work)")
    parser.add_argument("--source-size", type=int, default=160, help="side of the input JPEGs (default 160)")
    parser.add_argument("--size", type=int, default=112, help="output side (default 112)")
    parser.add_argument("--workers", default="1,2", help="comma-separated process counts (default 1,2)")
    parser.add_argument("--align", default="none,mtcnn", help="comma-separated alignment modes (default none,mtcnn)")


def make_face_folder(folder: Path, num_images: int, source_size: int) -> Path:
    """``folder`` with ``num_images`` JPEGs of real faces (LFW, 25x25, upscaled to ``source_size``),
    mirrored on every other pass through the 100 faces."""
    import numpy as np
    import skimage.data
    from PIL import Image, ImageOps

    faces = skimage.data.lfw_subset()[:100]  # the first 100 are faces, the rest are not
    folder.mkdir(parents=True)
    for i in range(num_images):
        img = Image.fromarray((faces[i % 100] * 255).astype(np.uint8)).convert("RGB")
        img = img.resize((source_size, source_size), Image.BICUBIC)
        if (i // 100) % 2:
            img = ImageOps.mirror(img)
        img.save(folder / f"{i:05d}.jpg", quality=95)
    return folder


def run(args) -> dict:
    from soft_dist.bench.harness import median_time
    from soft_dist.shard.build import ShardConfig, build_shards

    workers = [int(w) for w in args.workers.split(",")]
    aligns = [a.strip() for a in args.align.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="soft-dist-bench-shard-") as tmp:
        tmp = Path(tmp)
        make_face_folder(tmp / "in" / "train" / "face", args.num_images, args.source_size)
        out = tmp / "out"
        faces = {}
        for align in aligns:
            for n in workers:
                config = ShardConfig(layout="imagefolder", root=str(tmp / "in"), out=str(out), size=args.size,
                                     align=align, val_fraction=0.0, min_shards=4 * max(workers), workers=n,
                                     progress=False)

                def once():
                    shutil.rmtree(out, ignore_errors=True)  # a fresh build each time: no resume
                    faces["found"] = build_shards(config, log=lambda m: None)["alignment"]["faces_found"]

                timing = median_time(once, repeats=args.repeats, warmup=1)
                results[f"{align}_w{n}"] = {
                    "images_per_s": args.num_images / timing["median_s"],
                    **timing,
                    "faces_found": faces["found"],
                }
    return {"num_images": args.num_images, "source_size": args.source_size, "size": args.size, "results": results}
