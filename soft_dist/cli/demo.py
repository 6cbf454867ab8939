"""`soft-dist demo`: the whole product on the offline digits data, on this machine's CPU.

Shards scikit-learn's digits (32 px), injects 30% symmetric label noise, trains a plain CE baseline and
SOFT with 2 Ray Train workers (a local Ray cluster), and prints their test accuracies under every
evaluation protocol (soft_dist.train.protocols), for every branch, with the number of validation images
that decided each choice.

Set-up: the validation split is re-carved as 20% of the non-test images (data.val_fraction=0.2, about
290 images with noisy labels, instead of the shards' 179), because a 179-image noisy split chose the
weaker branch of a SOFT run by a handful of images. The schedule is the digits config's; nothing here is
tuned to favour either method (docs/experiments.md has the long, cross-validated comparison).

It ends with the next commands, paths filled in, that eval, export, predict on a few of the test split's
photos (written to RUN_DIR/photos) and audit the SOFT run: that run keeps its resumable state, which the
audit reads (student with its uncertainty head, and teacher); the CE run keeps model.pt and the logs."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from soft_dist.progress import counted

DEMO_CONFIG = "digits_cpu"  # the bundled configs/digits_cpu.yaml
METHODS = ("ce", "soft")
DEMO_OVERRIDES = ("data.val_fraction=0.2",)
AUDITED = "soft"  # keeps its resumable state (about 180 MB at 32 px) for `soft-dist audit`; CE keeps model.pt
SAMPLE_PHOTOS = 6  # test-split digits written to RUN_DIR/photos for `soft-dist predict`
PROTOCOL_COLUMNS = (("val_selected", "val_selected"), ("last", "last"), ("mean_last_5", "mean_last_5"),
                    ("best_on_test", "best_on_test*"))


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


def run(args: argparse.Namespace) -> int:
    import shutil

    from soft_dist.config import load_config
    from soft_dist.shard.build import ensure_digit_shards
    from soft_dist.train.ray_trainer import run_training

    shards = ensure_digit_shards(args.shards)
    rows = []
    for method in METHODS:
        # A demo run is not continued: only the audited one keeps its resumable state.
        overrides = [f"data.shards={shards.resolve()}", f"method.name={method}", f"noise.rate={args.noise_rate}",
                     f"train.workers={args.workers}", f"train.keep_state={str(method == AUDITED).lower()}",
                     *DEMO_OVERRIDES, *args.overrides]
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
    curves = plot_test_curves(args.run_dir, cfg.noise)
    if curves is not None:
        print(f"test accuracy per epoch, both methods and branches: {curves}")
    photos = write_sample_photos(shards, args.run_dir / "photos", SAMPLE_PHOTOS)
    print("\nNext, on the SOFT run (README, \"After the demo\"):")
    for command in next_commands(args.run_dir / AUDITED, shards, photos):
        print(f"  {command}")
    return 0


def plot_test_curves(run_dir: Path, noise) -> Path | None:
    """RUN_DIR/test_accuracy_per_epoch.png: each method's test accuracy after every epoch, the student
    solid and the teacher dashed (read from the runs' metrics.jsonl); None when there is no test split."""
    from soft_dist.experiment.grid_plots import plot_epoch_curves

    title = f"{noise.rate:.0%} {noise.kind} noise: test accuracy (clean labels) per epoch"
    return plot_epoch_curves({method: [run_dir / method] for method in METHODS}, title,
                             run_dir / "test_accuracy_per_epoch.png")


def next_commands(run_dir: Path, shards: Path, photos: Path) -> list[str]:
    """The commands a user runs next on the demo's SOFT run, with its paths; their outputs go inside the
    run directory, so the work tree stays clean."""
    run, q = str(run_dir), shlex.quote
    return [
        f"soft-dist eval {q(run)} --shards {q(str(shards))} --split test --out {q(str(run_dir / 'eval_test.json'))}",
        f"soft-dist export {q(run)} --format all --out {q(str(run_dir / 'exported'))}",
        f"soft-dist predict {q(run)} {q(str(photos))} --out {q(str(run_dir / 'predictions.csv'))}",
        f"soft-dist audit {q(run)} --out {q(str(run_dir / 'audit'))}",
    ]


def write_sample_photos(shards: Path, out: Path, count: int) -> Path:
    """The first test-split image of each of the first ``count`` classes, as out/<class>_<idx>.jpg (the
    shards' own JPEG bytes: the photos predict gets are the kind the model was tested on)."""
    import numpy as np

    from soft_dist.data.format import SplitSelection, load_manifest
    from soft_dist.data.labels import read_split_labels
    from soft_dist.data.tarindex import load_sample_table

    manifest = load_manifest(shards)
    idx, labels = read_split_labels(manifest, "test")
    picked = [int(idx[np.flatnonzero(labels == c)[0]]) for c in range(manifest.num_classes) if (labels == c).any()]
    picked = sorted(picked[:count])
    label_of = dict(zip(idx.tolist(), labels.tolist()))
    out.mkdir(parents=True, exist_ok=True)
    table = load_sample_table(shards, SplitSelection("test", ("test",), np.array(picked, dtype=np.int64)))
    try:
        for p in range(len(table)):
            i = int(table.idx[p])
            (out / f"{manifest.classes[label_of[i]]}_{i}.jpg").write_bytes(table.jpeg(p).tobytes())
    finally:
        table.close()
    return out


def print_table(rows: list[tuple[str, dict]], run_dir: Path) -> None:
    """Every protocol x method x branch, then what each choice rested on and the headline difference."""
    print("\n" + "\n".join(protocol_table(rows)))
    print(f"runs and results.json files in {run_dir}/")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def protocol_table(rows: list[tuple[str, dict]]) -> list[str]:
    """The demo's closing lines from each run's results.json ``protocols``."""
    test_n = ((rows[0][1].get("test") or {}).get("chosen") or {}).get("num_samples")
    lines = [f"Test accuracy (%) on the clean-label test split{f' ({test_n} images)' if test_n else ''}:",
             f"  {'method':<8}{'branch':<10}" + "".join(f"{title:>15}" for _, title in PROTOCOL_COLUMNS)]
    for method, results in rows:
        protocols = results["protocols"]
        branches = list(protocols["last"]["branches"])
        for branch in branches + (["chosen"] if len(branches) > 1 else []):
            cells = []
            for name, _ in PROTOCOL_COLUMNS:
                entry = protocols[name]
                if entry is None:
                    cells.append("-")
                elif branch == "chosen":
                    cells.append(f"{_pct(entry['accuracy'])} ({entry['branch'][0]})")
                else:
                    cells.append(_pct(entry["branches"][branch]["accuracy"]))
            lines.append(f"  {method:<8}{branch:<10}" + "".join(f"{c:>15}" for c in cells))
    lines.append("  chosen = the branch validation picks (s student, t teacher); * picks the epoch with the test "
                 "labels: optimistic, only for comparison with published tables")
    for method, results in rows:
        lines.append("  " + choice_sentence(method, model_protocol(results)))
    if len(rows) == 2:
        (a, ra), (b, rb) = rows
        diff = model_protocol(rb)["accuracy"] - model_protocol(ra)["accuracy"]
        images = f" = {round(abs(diff) * test_n)} of {test_n} test images" if test_n else ""
        lines.append(f"  {b} - {a} (model.pt against model.pt): {100 * diff:+.1f} points{images}; one run per "
                     "method, so a difference of a few images is noise (docs/experiments.md has the "
                     "cross-validated grid)")
    return lines


def model_protocol(results: dict) -> dict:
    """The protocol entry model.pt follows (results.json ``model.protocol``; val_selected in runs from
    before train.model_epoch existed), with its name under ``protocol``."""
    name = results["model"].get("protocol", "val_selected")
    return {**results["protocols"][name], "protocol": name}


def choice_sentence(method: str, entry: dict) -> str:
    """How model.pt was chosen: the epoch (by its protocol), the branch and the validation evidence for it."""
    text = (f"{method}: model.pt = epoch {entry['epoch']} (protocol {entry['protocol']}), {entry['branch']}, "
            f"chosen on {entry['val_samples']} noisy validation images")
    margin = entry.get("val_margin_samples")
    if margin is not None:
        text += f"; it beat the other branch there by {counted(margin, 'image')}"
    return text
