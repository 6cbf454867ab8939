"""Fig. 1-style bar charts: the SLS targets a finished run's final teacher gives a few training images.

For each image: bars = the SLS target y~ [C] (Eq. 3-4 with the run's tau and epsilon), dots = the
teacher's softmax q [C], a dashed line at tau; the given (noisy) label's bar is red, the clean label's
green (the same bar is green when they agree). Images come from the training split in split order,
seen as at evaluation (no augmentation): half of them with a flipped label when the run has any.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from soft_dist.config import load_config
from soft_dist.headless_pyplot import pyplot
from soft_dist.run_files import CONFIG_FILE, NOISE_TABLE_FILE

NOISY_COLOR, CLEAN_COLOR, OTHER_COLOR = "tab:red", "tab:green", "tab:gray"


def pick_images(cfg, table, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [n, 3, H, W], sample idx [n]): the first flipped and the first clean training images."""
    from soft_dist.data.format import load_manifest
    from soft_dist.data.loader import build_eval_loader
    from soft_dist.data.splits import run_splits

    flipped_by_idx = dict(zip(table.idx.tolist(), table.flipped.tolist()))
    want_flipped = count // 2 if table.flipped.any() else 0
    flipped, clean = [], []
    train_split = run_splits(load_manifest(cfg.data.shards), cfg.data)["train"]
    loader = build_eval_loader(cfg.data.shards, train_split, cfg.data, cfg.train.eval_batch_size)
    try:
        for batch in loader.epoch(0):
            for image, idx, valid in zip(batch.image, batch.idx.tolist(), batch.valid.tolist()):
                if not valid or idx not in flipped_by_idx:
                    continue
                bucket, limit = (flipped, want_flipped) if flipped_by_idx[idx] else (clean, count - want_flipped)
                if len(bucket) < limit:
                    bucket.append((idx, image))
            if len(flipped) >= want_flipped and len(clean) >= count - want_flipped:
                break
    finally:
        loader.close()
    chosen = flipped + clean
    return torch.stack([im for _, im in chosen]), torch.tensor([i for i, _ in chosen])


def plot_sls_targets(run_dir: Path, count: int, path: Path) -> Path:
    """Write the bar-chart figure for the final teacher of ``run_dir`` to ``path``."""
    from soft_dist.data.format import load_manifest
    from soft_dist.data.stage import local_shards
    from soft_dist.experiment.confusion import load_branch
    from soft_dist.method.sls import soft_label_smoothing
    from soft_dist.noise.table import NoiseTable

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / CONFIG_FILE)
    manifest = load_manifest(local_shards(cfg.data.shards, cfg.data.cache_dir, cfg.data.cache_max_gb))
    classes = manifest.classes
    tau = cfg.method.tau_for(manifest.num_classes)  # runs save the resolved value; older ones too
    table = NoiseTable.load(run_dir / NOISE_TABLE_FILE)
    teacher = load_branch(run_dir, cfg, "teacher", manifest.num_classes)
    images, idx = pick_images(cfg, table, count)
    with torch.no_grad():
        logits = teacher(images)  # [n, C]
    q = torch.softmax(logits.float(), dim=-1)
    target = soft_label_smoothing(logits, tau, cfg.method.epsilon, low_mass=cfg.method.sls_low_mass)  # [n, C]
    position = {int(i): p for p, i in enumerate(table.idx.tolist())}

    plt = pyplot()
    cols = min(3, len(idx))
    rows = math.ceil(len(idx) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), dpi=90, squeeze=False)
    for n, ax in enumerate(axes.flat):
        if n >= len(idx):
            ax.axis("off")
            continue
        p = position[int(idx[n])]
        given, clean = int(table.noisy[p]), int(table.clean[p])
        colors = [OTHER_COLOR] * len(classes)
        colors[given] = NOISY_COLOR
        colors[clean] = CLEAN_COLOR
        x = range(len(classes))
        ax.bar(x, target[n].numpy(), color=colors)
        ax.plot(x, q[n].numpy(), "k.", markersize=4)
        ax.axhline(tau, color="k", linestyle="--", linewidth=0.7)
        ax.set_xticks(list(x), [str(c) for c in classes], rotation=90 if len(classes) > 10 else 0, fontsize=7)
        ax.set_ylim(0, 1)
        state = "flipped" if given != clean else "clean"
        ax.set_title(f"#{int(idx[n])} given {classes[given]}, clean {classes[clean]} ({state})", fontsize=8)
    fig.suptitle(f"SLS targets of the final teacher (tau={tau:g}, eps={cfg.method.epsilon:g}); "
                 f"red: given label, green: clean label, dots: softmax, dashed: tau", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
