"""`soft-dist demo`: the whole product on the offline digits data, on this machine's CPU.

Shards scikit-learn's digits (32 px), injects 30% symmetric label noise, trains a plain CE baseline and
SOFT with 2 Ray Train workers (a local Ray cluster), and prints their test accuracies side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEMO_CONFIG = REPO_CONFIGS / "digits_cpu.yaml"
METHODS = ("ce", "soft")


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="CE vs SOFT on noisy digits with 2 Ray workers on CPU (minutes)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/demo"), help="where the two runs go (default runs/demo)")
    p.add_argument("--shards", type=Path, default=Path("data_shards/digits32"),
                   help="digits shards (written here first if missing)")
    p.add_argument("--noise-rate", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=None, help="override the demo config's epoch count")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra config overrides for both runs")
    p.set_defaults(func=run)


def ensure_digit_shards(out: Path) -> Path:
    from soft_dist.data.build import ShardConfig, build_shards
    from soft_dist.data.format import MANIFEST_NAME

    if not (out / MANIFEST_NAME).is_file():
        print(f"writing digits shards to {out} ...", flush=True)
        build_shards(ShardConfig(layout="digits", out=str(out), size=32, min_shards=8, progress=False))
    return out


def run(args: argparse.Namespace) -> int:
    import shutil

    from soft_dist.config import load_config
    from soft_dist.train.ray_trainer import run_training

    if not DEMO_CONFIG.is_file():
        raise SystemExit(f"soft-dist demo: {DEMO_CONFIG} not found (run from a checkout, installed with pip -e)")
    shards = ensure_digit_shards(args.shards)
    rows = []
    for method in METHODS:
        # keep_state=false: a demo run is not continued, so only model.pt and the logs stay on disk.
        overrides = [f"data.shards={shards.resolve()}", f"method.name={method}", f"noise.rate={args.noise_rate}",
                     f"train.workers={args.workers}", "train.keep_state=false", *args.overrides]
        if args.epochs:
            overrides.append(f"train.epochs={args.epochs}")
        cfg = load_config(DEMO_CONFIG, overrides)
        run_dir = args.run_dir / method
        if run_dir.exists():
            shutil.rmtree(run_dir)  # the demo always starts fresh
        print(f"\n== {method}: {cfg.train.epochs} epochs, {cfg.train.workers} Ray workers, "
              f"{cfg.noise.rate:.0%} {cfg.noise.kind} noise ==", flush=True)
        rows.append((method, run_training(cfg, run_dir)))
    print_table(rows, args.run_dir)
    return 0


def print_table(rows: list[tuple[str, dict]], run_dir: Path) -> None:
    print("\nTest results (branch chosen on the noisy validation split):")
    print(f"  {'method':<8}{'branch':<10}{'accuracy':>10}{'mean class acc':>16}{'img/s/worker':>14}")
    for method, r in rows:
        t = r["test"]["chosen"]
        print(f"  {method:<8}{r['chosen_branch']:<10}{t['accuracy']:>10.4f}{t['mean_class_accuracy']:>16.4f}"
              f"{r['throughput']['images_per_s_per_worker']:>14.1f}")
    print(f"runs and results.json files in {run_dir}/")
