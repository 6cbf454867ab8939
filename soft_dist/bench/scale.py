"""`soft-dist bench scale`: training from shards at N = 10k, 100k, 300k images: images/s and memory.

For each N in ``--sizes`` a shard set of N training images (and N/10 validation images) is made from real
pixels by soft_dist.bench.scale_data (the digits through seeded warps, elastic distortion and colours,
48 px by default) and written with the project's writer; a set already in ``--folder`` from the same
generator settings is reused. Then, for each N, a fresh process does what a training worker does, on
the whole split:

    verify     `soft-dist shard --verify` of the whole set (sha256, every member, index files): seconds
    driver     the noise table from the shards' labels (what the driver reads before any worker starts)
    loaders    the run's loaders over the shards (sample tables of every split)
    train      ``--warmup`` untimed steps, then ``--repeats`` windows of ``--steps`` steps of the learner
               (student, EMA teacher, SOFT objective) fed by the DALI pipeline: images/s per window
    eval       ``--eval-batches`` batches of the validation split through both branches: images/s
    checkpoint the learner's state written as a checkpoint folder (state.pt + meta.json): seconds, MB

and reports the median images/s over its windows, and its resident memory (VmRSS after the steps, VmHWM
the peak; Linux /proc). The sizes run in rounds whose order alternates (small to large, then large to
small) so that drift on a shared machine falls on every N alike; a figure is the median over rounds.

``per_image_growth`` (train): images/s at the smallest N over images/s at the largest (1.0: flat), and
the RSS growth in MB from the smallest to the largest N.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from soft_dist.bench.metadata import parse_sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="10000,100000,300000",
                        help="comma-separated training-set sizes N (default 10000,100000,300000)")
    parser.add_argument("--folder", type=Path, default=None,
                        help="where the shard sets are kept (reused when present; default: a temporary folder; "
                             "300k images of 48 px take about 1.7 GB)")
    parser.add_argument("--image-size", type=int, default=48, help="side of the generated images (default 48)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed window (default 8)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first (default 3)")
    parser.add_argument("--eval-batches", type=int, default=4, help="validation batches timed (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the sizes, alternating order (default 2)")
    parser.add_argument("--config", default="digits_cpu", metavar="NAME|FILE", help="run config (default digits_cpu)")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the size table as Markdown to this file")
    parser.add_argument("--plot", type=Path, default=None,
                        help="also draw images/s, memory and per-image seconds against N (log-log) into this PNG")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides (data.image_size is the generated size)")


def shard_set(folder: Path, num_train: int, image_size: int, log=print) -> Path:
    """The generated shard set of ``num_train`` images in ``folder``, written unless it is there already."""
    from soft_dist.bench.scale_data import write_scale_shards
    from soft_dist.data.format import MANIFEST_NAME
    from soft_dist.progress import progress_bar

    out = folder / f"scale{num_train}_{image_size}px"
    manifest = out / MANIFEST_NAME
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        same = data.get("generator", {}).get("size") == image_size and "num_indices" in data
        if same and data["splits"]["train"]["num_samples"] == num_train:
            return out
    total = num_train + max(10, num_train // 10)
    bar = progress_bar(total, f"scale set N={num_train}", "img", leave=True)
    started = time.perf_counter()
    write_scale_shards(out, num_train, size=image_size, progress=bar.update)
    bar.close()
    log(f"[bench scale] wrote {total:,} images to {out} in {time.perf_counter() - started:.0f} s")
    return out


def _memory_mb() -> dict:
    """This process's resident memory now and at its peak, and now its anonymous part (its own heap) and
    its file-backed part (mapped files and libraries), MB (Linux /proc; empty elsewhere)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {key: int(fields[name].split()[0]) / 1024 for key, name in (
        ("rss_mb", "VmRSS"), ("peak_rss_mb", "VmHWM"), ("anon_mb", "RssAnon"), ("file_mb", "RssFile"))}


def measure_training(shards: str, config: str, overrides: list[str], steps: int, warmup: int, windows: int,
                     eval_batches: int) -> dict:
    """One N in this (fresh) process: see the module docstring. Returns the figures of this round."""
    import torch

    from soft_dist.config import load_config, resolve_for_classes
    from soft_dist.data.run_loaders import shard_loaders
    from soft_dist.method.model import build_student
    from soft_dist.noise.setup import make_noise_table
    from soft_dist.shard.verify import verify_shards
    from soft_dist.train.checkpoints import write_state_folder
    from soft_dist.train.epoch import predict_branches
    from soft_dist.train.step import SoftLearner

    cfg = load_config(config, [f"data.shards={shards}", *overrides])
    torch.set_num_threads(cfg.train.torch_threads or cfg.train.cpus_per_worker)
    out = {"start": _memory_mb()}
    began = time.perf_counter()
    report = verify_shards(shards)
    if not report["ok"]:
        raise SystemExit(f"soft-dist bench scale: {shards} does not verify: {report['errors'][:3]}")
    seconds = time.perf_counter() - began
    out["verify"] = {"seconds": seconds, "us_per_image": 1e6 * seconds / report["num_samples"], **_memory_mb()}
    began = time.perf_counter()
    table, num_classes = make_noise_table(cfg)
    out["driver"] = {"seconds": time.perf_counter() - began, **_memory_mb()}
    cfg = resolve_for_classes(cfg, num_classes)
    began = time.perf_counter()
    loaders = shard_loaders(cfg, diagnostics=False)
    out["loaders"] = {"seconds": time.perf_counter() - began, **_memory_mb()}
    try:
        student, _ = build_student(cfg.model.name, num_classes, cfg.data.image_size, cfg.model.small_stem,
                                   cfg.model.pretrained, width=cfg.model.width, uncertainty=cfg.preset.head)
        learner = SoftLearner(cfg, student, noisy_labels=torch.from_numpy(table.lookup()))
        learner.start_epoch(max(cfg.method.stage1_epochs, cfg.method.sls_start_epoch))  # the full objective
        batches = iter(loaders.train.epoch(0))
        needed = warmup + windows * steps
        if needed > len(loaders.train):
            raise SystemExit(f"soft-dist bench scale: {needed} steps do not fit in one epoch of "
                             f"{len(loaders.train)} steps; lower --steps, --warmup or --repeats")
        for _ in range(warmup):
            learner.train_step(next(batches), 1.0)
        speeds = []
        for _ in range(windows):
            began = time.perf_counter()
            images = 0
            for _ in range(steps):
                batch = next(batches)
                learner.train_step(batch, 1.0)
                images += int(batch.valid.sum())
            speeds.append(images / (time.perf_counter() - began))
        out["train"] = {"images_per_s": statistics.median(speeds), "windows": speeds, **_memory_mb()}
        began = time.perf_counter()
        # one pass of the loader through both branches, as the run's evaluate
        rows = [b for _, b in zip(range(eval_batches), loaders.val.epoch(0))]
        evaluated = len(predict_branches(learner.branches(), rows)["student"][0])
        out["eval"] = {"images_per_s": evaluated / (time.perf_counter() - began), **_memory_mb()}
        with tempfile.TemporaryDirectory(prefix="soft-dist-bench-scale-") as folder:
            began = time.perf_counter()
            written = write_state_folder({"learner": learner.state_dict(), "epoch": 1}, Path(folder))
            out["checkpoint"] = {"seconds": time.perf_counter() - began,
                                 "mb": sum(p.stat().st_size for p in written.iterdir()) / 2**20}
    finally:
        loaders.close()
    out["config"] = {"model": cfg.model.name, "width": cfg.model.width, "image_size": cfg.data.image_size,
                     "batch_size": cfg.train.batch_size, "loader": cfg.data.loader, "method": cfg.method.name,
                     "threads": torch.get_num_threads(), "loader_threads": cfg.data.num_threads}
    return out


def _in_fresh_process(*args) -> dict:
    import multiprocessing

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure_training, *args).result()


def run(args: argparse.Namespace) -> dict:
    sizes = parse_sizes(args.sizes)
    overrides = [f"data.image_size={args.image_size}", *args.overrides]
    with tempfile.TemporaryDirectory(prefix="soft-dist-bench-scale-") as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        sets = {n: str(shard_set(folder, n, args.image_size)) for n in sizes}
        rounds: dict[int, list[dict]] = {n: [] for n in sizes}
        for r in range(args.rounds):
            for n in (sizes if r % 2 == 0 else sizes[::-1]):
                got = _in_fresh_process(sets[n], args.config, overrides, args.steps, args.warmup, args.repeats,
                                        args.eval_batches)
                rounds[n].append(got)
                print(f"[bench scale] round {r + 1}/{args.rounds} N={n:,}: {got['train']['images_per_s']:.1f} img/s, "
                      f"RSS {got['train'].get('rss_mb', float('nan')):.0f} MB", flush=True)
    per_size = {str(n): _summary(rounds[n]) for n in sizes}
    small, large = per_size[str(sizes[0])], per_size[str(sizes[-1])]
    result = {
        "config": rounds[sizes[0]][0]["config"] | {"steps": args.steps, "warmup": args.warmup,
                                                   "windows": args.repeats, "rounds": args.rounds},
        "sizes": per_size,
        "per_image_growth": {
            "train_images_per_s_smallest_over_largest": small["train_images_per_s"] / large["train_images_per_s"],
            "train_rss_mb_largest_minus_smallest": large["train_rss_mb"] - small["train_rss_mb"],
            "driver_rss_mb_largest_minus_smallest": large["driver_rss_mb"] - small["driver_rss_mb"],
        },
    }
    for path, write in ((args.markdown, lambda p: p.write_text(markdown_table(result))),
                        (args.plot, lambda p: plot(result, p))):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
    return result


def markdown_table(result: dict) -> str:
    """One row per N: training images/s (windows' range), worker memory, verify, driver, loaders, eval, checkpoint."""
    head = ["N", "train images/s (min-max of windows)", "worker RSS after the steps: total / anonymous / file-backed",
            "verify: us/image, s", "driver: noise table, RSS", "loaders built", "eval images/s", "checkpoint"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, e in result["sizes"].items():
        lines.append(
            f"| {int(n):,} | {e['train_images_per_s']:.1f} ({e['train_images_per_s_min']:.1f}-"
            f"{e['train_images_per_s_max']:.1f}) | {e['train_rss_mb']:,.0f} / {e['train_anon_mb']:,.0f} / "
            f"{e['train_file_mb']:,.0f} MB | {e['verify_us_per_image']:.0f} us, {e['verify_seconds']:.1f} s | "
            f"{e['driver_seconds']:.2f} s, {e['driver_rss_mb']:,.0f} MB | {e['loaders_seconds']:.2f} s | "
            f"{e['eval_images_per_s']:.0f} | {e['checkpoint_seconds']:.2f} s, {e['checkpoint_mb']:.0f} MB |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Three log-log panels against N: images/s (train, eval), worker and driver RSS (MB), and the seconds
    per image of the stages that pass over every sample (verify, driver, loaders)."""
    from soft_dist.headless_pyplot import log_log_axes, pyplot

    plt = pyplot()
    sizes = [int(n) for n in result["sizes"]]
    rows = list(result["sizes"].values())
    panels = [
        ("images/s", {"train": "train_images_per_s", "eval": "eval_images_per_s"}),
        ("resident memory, MB", {"worker (after the steps)": "train_rss_mb", "worker, anonymous": "train_anon_mb",
                                 "driver": "driver_rss_mb"}),
        ("seconds per image", {"verify": "verify_us_per_image", "driver (noise table)": "driver_seconds",
                               "loaders built": "loaders_seconds"}),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (label, series) in zip(axes, panels):
        for name, key in series.items():
            if key == "verify_us_per_image":
                values = [r[key] * 1e-6 for r in rows]
            elif label == "seconds per image":
                values = [r[key] / n for r, n in zip(rows, sizes)]
            else:
                values = [r[key] for r in rows]
            ax.plot(sizes, values, marker="o", label=name)
        log_log_axes(ax, "training images N", label)
        ax.legend(fontsize=8, loc="center right")
    config = result["config"]
    fig.suptitle(f"soft-dist bench scale: {config['model']} width {config['width']}, {config['image_size']} px, "
                 f"batch {config['batch_size']}, {config['loader']} loader, one worker process per N", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _summary(rounds: list[dict]) -> dict:
    """Median over rounds of each figure; the windows of every round for the spread."""
    def median(stage: str, key: str) -> float:
        return statistics.median(r[stage].get(key, float("nan")) for r in rounds)  # no /proc: nan

    windows = [w for r in rounds for w in r["train"]["windows"]]
    return {
        "train_images_per_s": median("train", "images_per_s"),
        "train_images_per_s_min": min(windows), "train_images_per_s_max": max(windows),
        "train_rss_mb": median("train", "rss_mb"), "train_peak_rss_mb": median("train", "peak_rss_mb"),
        "train_anon_mb": median("train", "anon_mb"), "train_file_mb": median("train", "file_mb"),
        "verify_seconds": median("verify", "seconds"), "verify_us_per_image": median("verify", "us_per_image"),
        "verify_rss_mb": median("verify", "rss_mb"),
        "driver_seconds": median("driver", "seconds"), "driver_rss_mb": median("driver", "rss_mb"),
        "loaders_seconds": median("loaders", "seconds"), "loaders_rss_mb": median("loaders", "rss_mb"),
        "eval_images_per_s": median("eval", "images_per_s"),
        "checkpoint_seconds": median("checkpoint", "seconds"), "checkpoint_mb": median("checkpoint", "mb"),
    }
