"""`soft-dist bench tools-scale`: `eval`, `audit` and `predict` over whole splits of N = 10k and 100k images.

What a user runs after training, timed over everything it reads. For each N in ``--sizes``, kept in
``--folder`` and reused (the same generated data as `bench scale` and `bench shard-scale`):

* the shard set of N training images (soft_dist.bench.scale_data, 48 px) and a run trained on it for one
  epoch (`soft-dist train`, ``--config`` plus ``--train`` overrides: a small network by default, so that
  the figures show what grows with N rather than the network's compute); set-up, not timed;
* an image folder of N other photos made the same way.

Then, each in a process of its own, in rounds of alternating order (a figure is the median over rounds):

    eval           soft-dist eval RUN --shards SET --split train       every training image, one branch
    audit          soft-dist audit RUN --out DIR                       both branches over every training
                                                                       image, the ranking, CSV, the sheet
    predict        soft-dist predict RUN FOLDER --align none           every photo, rows to a CSV
    predict-ray    the same with --runner ray (Ray Data stages, a new local Ray instance)

Measured per command: seconds from start to exit (start-up included), microseconds per image, and the
peak resident memory of its process, of its largest descendant and of the whole tree (Linux /proc,
sampled every 0.1 s; soft_dist.bench.process_tree).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

from soft_dist.bench.metadata import parse_sizes
from soft_dist.bench.process_tree import alternating_rounds, print_round, require_proc, rounds_result, run_measured

COMMANDS = ("eval", "audit", "predict", "predict-ray")
DEFAULT_TRAIN = ("model.width=16", "train.epochs=1", "method.stage1_epochs=0", "train.batch_size=128")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated image counts N (default 10000,100000)")
    parser.add_argument("--folder", type=Path, default=None,
                        help="where the data and the trained runs are kept (reused when present; default: a "
                             "temporary folder)")
    parser.add_argument("--image-size", type=int, default=48, help="side of the generated images (default 48)")
    parser.add_argument("--commands", default=",".join(COMMANDS),
                        help=f"comma-separated commands to time (default {','.join(COMMANDS)})")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the sizes, alternating order (default 2)")
    parser.add_argument("--config", default="digits_cpu", metavar="NAME|FILE", help="the runs' config (default digits_cpu)")
    parser.add_argument("--train", nargs="*", default=list(DEFAULT_TRAIN), metavar="key=value",
                        help=f"overrides of the set-up runs (default: {' '.join(DEFAULT_TRAIN)})")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown to this file")


def _soft_dist(*args: str) -> list[str]:
    return [sys.executable, "-m", "soft_dist", *args]


def trained_run(folder: Path, shards: Path, num_train: int, image_size: int, config: str, train: list[str]) -> Path:
    """A run trained on ``shards`` in ``folder`` (reused when it finished with the same overrides)."""
    run_dir = folder / f"run{num_train}_{image_size}px"
    overrides = [f"data.shards={shards}", f"data.image_size={image_size}", *train]
    recipe = run_dir / "bench_recipe.json"
    wanted = json.dumps({"config": config, "overrides": overrides})
    if (run_dir / "results.json").is_file() and recipe.is_file() and recipe.read_text() == wanted:
        return run_dir
    started = time.perf_counter()
    print(f"[bench tools-scale] training the run for N={num_train:,} (set-up, not timed)", flush=True)
    run_measured(_soft_dist("train", "--config", config, "--run-dir", str(run_dir), *overrides),
                 f"soft-dist train for N={num_train}")
    recipe.write_text(wanted)
    print(f"[bench tools-scale] trained {run_dir} in {time.perf_counter() - started:.0f} s", flush=True)
    return run_dir


def command_line(name: str, run_dir: Path, shards: Path, photos: Path, out: Path) -> list[str]:
    """The command ``name`` times (see the module docstring), writing under ``out``."""
    if name == "eval":
        return _soft_dist("eval", str(run_dir), "--shards", str(shards), "--split", "train",
                          "--out", str(out / "eval.json"), "--no-progress")
    if name == "audit":
        return _soft_dist("audit", str(run_dir), "--out", str(out / "audit"))
    runner = "ray" if name == "predict-ray" else "local"  # name is "predict" or "predict-ray" (run checks)
    return _soft_dist("predict", str(run_dir), str(photos / "train"), "--out", str(out / "predictions.csv"),
                      "--align", "none", "--runner", runner, "--no-progress")


def images_done(name: str, out: Path) -> int:
    """How many images the command ``name`` reported on in ``out`` (to check that it did them all)."""
    if name == "eval":
        return int(json.loads((out / "eval.json").read_text())["num_samples"])
    path = out / "audit" / "audit.csv" if name == "audit" else out / "predictions.csv"
    with open(path, newline="") as f:
        return sum(1 for _ in csv.reader(f)) - 1  # the header


def run(args: argparse.Namespace) -> dict:
    from soft_dist.bench.scale import shard_set
    from soft_dist.bench.shard_scale import image_folder

    sizes = parse_sizes(args.sizes)
    commands = [c.strip() for c in args.commands.split(",")]
    unknown = [name for name in commands if name not in COMMANDS]
    if unknown:  # before any set-up
        raise SystemExit(f"soft-dist bench tools-scale: unknown command {unknown[0]!r} (known: {', '.join(COMMANDS)})")
    require_proc("tools-scale")
    measured: dict[tuple[int, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="soft-dist-bench-tools-scale-") as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        inputs = {}
        for n in sizes:
            shards = shard_set(folder, n, args.image_size)
            inputs[n] = (trained_run(folder, shards, n, args.image_size, args.config, args.train), shards,
                         image_folder(folder, n, args.image_size))
        for r, n, name in alternating_rounds(sizes, commands, args.rounds):
            with tempfile.TemporaryDirectory(dir=tmp) as out:
                got = run_measured(command_line(name, *inputs[n], Path(out)), f"soft-dist {name} (N={n})")
                done = images_done(name, Path(out))
            if done != n:
                raise RuntimeError(f"soft-dist {name} reported on {done} of {n} images")
            got.pop("output")
            got["us_per_image"] = 1e6 * got["seconds"] / n
            measured.setdefault((n, name), []).append(got)
            print_round("tools-scale", r, args.rounds, n, name, got)
    config = {"image_size": args.image_size, "run_config": args.config, "run_overrides": args.train,
              "rounds": args.rounds}
    return rounds_result(measured, config, args.markdown, "command", commands)

