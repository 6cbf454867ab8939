"""`soft-dist bench shard-scale`: `soft-dist shard` of an image folder of N photos, for N = 10k and 100k.

For each N in ``--sizes`` an image folder of N JPEGs (``ROOT/train/<digit>/<n>.jpg``, made from real
digit pixels by soft_dist.bench.scale_data, 48 px by default) is written once into ``--folder`` and
reused. Then each run of ``--runs`` (``process:1``, ``process:2``: the process pool with 1 or 2 worker
processes; ``ray:2``: Ray tasks on a new local Ray instance) shards it with the real command, in a
process of its own, without alignment (the digits hold no faces; MTCNN's cost per image is in
`soft-dist bench shard`), into a fresh output folder:

    soft-dist shard --layout imagefolder --root ROOT --out OUT --size S --align none --workers W --backend B

Measured per run: seconds from start to exit (start-up, reading the folder, carving the validation share,
encoding, writing, the manifest; for Ray also starting and stopping its instance), microseconds per image,
and the peak resident memory of the command's own process (the driver), of its largest worker process
and of the whole process tree, read from Linux /proc every 0.1 s. The output is checked: the manifest
must count every image. Runs go in rounds whose order alternates (sizes small to large, then large to
small); a figure is the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from soft_dist.bench.metadata import parse_sizes
from soft_dist.bench.process_tree import alternating_rounds, print_round, require_proc, rounds_result, run_measured


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated image counts N (default 10000,100000)")
    parser.add_argument("--folder", type=Path, default=None,
                        help="where the image folders are kept (reused when present; default: a temporary folder)")
    parser.add_argument("--image-size", type=int, default=48, help="side of the generated photos (default 48)")
    parser.add_argument("--size", type=int, default=48, help="--size of the shards (default 48)")
    parser.add_argument("--runs", default="process:1,process:2,ray:2",
                        help="comma-separated BACKEND:WORKERS (default process:1,process:2,ray:2)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the sizes, alternating order (default 2)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown to this file")


def parse_runs(text: str) -> list[str]:
    """" process:1, ray:2" -> ["process:1", "ray:2"], each checked; SystemExit naming a bad entry."""
    runs = []
    for part in text.split(","):
        backend, _, workers = part.strip().partition(":")
        if backend not in ("process", "ray") or not workers.isdigit() or int(workers) < 1:
            raise SystemExit(f"soft-dist bench shard-scale: --runs entry {part.strip()!r} is not BACKEND:WORKERS "
                             f"(BACKEND process or ray, WORKERS >= 1)")
        runs.append(part.strip())
    return runs


def image_folder(folder: Path, num_images: int, image_size: int) -> Path:
    """The generated image folder of ``num_images`` photos in ``folder``, written unless it is there."""
    from soft_dist.bench.scale_data import FOLDER_MARKER, write_scale_folder
    from soft_dist.progress import progress_bar

    root = folder / f"folder{num_images}_{image_size}px"
    if (root / FOLDER_MARKER).is_file():
        return write_scale_folder(root, num_images, size=image_size)  # reused when the settings match
    bar = progress_bar(num_images, f"image folder N={num_images}", "img", leave=True)
    started = time.perf_counter()
    write_scale_folder(root, num_images, size=image_size, progress=bar.update)
    bar.close()
    print(f"[bench shard-scale] wrote {num_images:,} photos to {root} in {time.perf_counter() - started:.0f} s",
          flush=True)
    return root


def shard_once(root: Path, out: Path, backend: str, workers: int, size: int, num_images: int) -> dict:
    """One `soft-dist shard` run in its own process: seconds, us/image and peak memory (see the docstring)."""
    shutil.rmtree(out, ignore_errors=True)  # a fresh build: nothing reused from an earlier run
    command = [sys.executable, "-m", "soft_dist", "shard", "--layout", "imagefolder", "--root", str(root),
               "--out", str(out), "--size", str(size), "--align", "none", "--workers", str(workers),
               "--backend", backend, "--no-progress"]
    got = run_measured(command, f"soft-dist shard ({backend}:{workers})")
    manifest = json.loads((out / "manifest.json").read_text())
    written = sum(split["num_samples"] for split in manifest["splits"].values())
    if written != num_images:
        raise RuntimeError(f"soft-dist shard ({backend}:{workers}) wrote {written} of {num_images} photos")
    return {"seconds": got["seconds"], "us_per_image": 1e6 * got["seconds"] / num_images,
            **{k: got[k] for k in ("driver_peak_mb", "worker_peak_mb", "total_peak_mb")}}


def run(args: argparse.Namespace) -> dict:
    sizes, runs = parse_sizes(args.sizes), parse_runs(args.runs)
    require_proc("shard-scale")
    measured: dict[tuple[int, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="soft-dist-bench-shard-scale-") as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        roots = {n: image_folder(folder, n, args.image_size) for n in sizes}
        for r, n, name in alternating_rounds(sizes, runs, args.rounds):
            backend, workers = name.split(":")
            got = shard_once(roots[n], Path(tmp) / "out", backend, int(workers), args.size, n)
            measured.setdefault((n, name), []).append(got)
            print_round("shard-scale", r, args.rounds, n, name, got)
    config = {"image_size": args.image_size, "shard_size_px": args.size, "align": "none", "rounds": args.rounds}
    return rounds_result(measured, config, args.markdown, "run", runs)

