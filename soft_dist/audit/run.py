"""Reading a finished run for the audit and scoring its training samples, in this process or on Ray.

What a run directory must hold (soft_dist.train.run): ``config.yaml``, ``noise_table.csv`` (the given
labels, and the clean ones where the noise was injected) and a complete resumable state under
``checkpoints/`` (the student WITH its uncertainty head and the teacher; kept unless train.keep_state
was false). model.pt alone is not enough: it holds one branch and no head.

The training split is the run's own (soft_dist.data.splits.run_splits: carved or not), so exactly the
samples the run trained on are scored. Each scorer reads a contiguous share of them (by ascending idx)
through the project's evaluation loader (the un-augmented view); one process reads one share, ``workers``
Ray tasks read one each, and the rows are put back in idx order, so both give the same arrays.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from soft_dist.audit.scores import NetworkOutputs
from soft_dist.config import Config, ConfigError, DataConfig, config_from_yaml
from soft_dist.data.format import Manifest, SplitSelection, load_manifest
from soft_dist.noise.table import NoiseTable
from soft_dist.progress import progress_bar
from soft_dist.run_files import CONFIG_FILE, NOISE_TABLE_FILE
from soft_dist.run_inputs import missing_run_input, read_noise_table
from soft_dist.train.errors import CheckpointError


@dataclass
class AuditRun:
    """A finished run, ready to be audited: its config, noise table, shards and training split."""

    run_dir: str
    cfg: Config
    table: NoiseTable
    manifest: Manifest
    shards_dir: Path
    train: SplitSelection  # the run's training samples (idx ascending)
    state: dict  # the newest complete resumable state (soft_dist.train.checkpoints)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest.classes)

    def given_and_clean(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(given [N], clean [N]) labels of the sample indices ``idx`` [N] from the noise table."""
        order = np.argsort(self.table.idx, kind="stable")
        table_idx = self.table.idx[order]
        pos = np.searchsorted(table_idx, idx)
        ok = (pos < len(table_idx)) & (table_idx[np.minimum(pos, len(table_idx) - 1)] == idx)
        if not ok.all():
            raise CheckpointError(f"{self.run_dir}/{NOISE_TABLE_FILE}: {int((~ok).sum())} training samples of the run "
                                  f"are not in the noise table (first idx {idx[~ok][:5].tolist()}); "
                                  "are --shards the shards the run trained on?")
        return self.table.noisy[order][pos], self.table.clean[order][pos]

    @property
    def truth_known(self) -> bool:
        """Whether the noise table records which given labels are wrong: injected noise, or a noise list
        whose labels differ from the shards' (clean) labels for some samples."""
        return self.table.kind != "none" and bool(self.table.flipped.any())

    @property
    def head_trained(self) -> bool:
        """Whether the student's uncertainty head was trained (the run reached its second stage)."""
        # the head is on from the epoch after stage 1 (0-based index stage1_epochs = epoch stage1_epochs + 1)
        return bool(self.cfg.preset.head) and int(self.state["epoch"]) > self.cfg.method.stage1_epochs


def load_run(run_dir: str | Path, shards: str | None = None, loader: str | None = None) -> AuditRun:
    """Read RUN/config.yaml, RUN/noise_table.csv and the newest complete checkpoint; ``shards`` replaces
    the config's data.shards (a run trained on another machine), ``loader`` its data.loader.
    Errors name the missing or bad file (CheckpointError, ConfigError, ManifestError)."""
    from soft_dist.data.splits import run_splits
    from soft_dist.data.stage import local_shards
    from soft_dist.storage import RunStore
    from soft_dist.train.checkpoints import CHECKPOINTS_DIR, latest_state

    store = RunStore(run_dir)
    missing = missing_run_input(store)
    if missing:
        raise CheckpointError(f"{store.path(missing)}: not found; is {store.location} a run directory "
                              "written by `soft-dist train`?")
    overrides = [f"data.shards={shards}"] if shards else []
    if loader:
        overrides.append(f"data.loader={loader}")
    cfg = config_from_yaml(store.read_text(CONFIG_FILE), store.path(CONFIG_FILE), overrides)
    try:
        table = read_noise_table(store)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    if not cfg.data.shards:
        raise ConfigError("data.shards", f"{store.path(CONFIG_FILE)} names no shards; pass --shards DIR")
    shards_dir = local_shards(cfg.data.shards, cfg.data.cache_dir, cfg.data.cache_max_gb)
    manifest = load_manifest(shards_dir)
    train = run_splits(manifest, cfg.data)["train"]
    train = as_selection(manifest, train)
    skipped: list[str] = []
    state = latest_state(store, skipped=skipped.append)
    if state is None:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise CheckpointError(f"{store.path(CHECKPOINTS_DIR)}: no complete checkpoint{why}. The audit needs the "
                              "resumable state (student with its uncertainty head, teacher); model.pt holds one "
                              "branch only. Train with train.keep_state=true (the default).")
    return AuditRun(store.location, cfg, table, manifest, shards_dir, train, state)


def as_selection(manifest: Manifest, split: str | SplitSelection) -> SplitSelection:
    """A shard split name as the selection of all its samples (a carved split is returned as it is)."""
    if isinstance(split, SplitSelection):
        return split
    from soft_dist.data.labels import read_split_labels

    idx, _ = read_split_labels(manifest, split)
    return SplitSelection("train", (split,), np.sort(idx))


def contiguous_shares(selection: SplitSelection, parts: int) -> list[SplitSelection]:
    """``selection`` cut into ``parts`` contiguous runs of ascending idx (sizes differ by at most one;
    empty shares are dropped)."""
    chunks = np.array_split(np.sort(selection.idx), max(1, parts))
    return [SplitSelection(selection.name, selection.sources, c) for c in chunks if len(c)]


# ----------------------------------------------------------------------------- one share (torch only)


def build_networks(state: dict, cfg: Config, num_classes: int):
    """(student with its uncertainty head when the run has one, teacher or None) in eval mode, from a
    resumable state's ``learner`` entry."""
    from soft_dist.method.model import build_student

    learner = state["learner"]
    student, _ = build_student(cfg.model.name, num_classes, cfg.data.image_size, cfg.model.small_stem, None,
                               width=cfg.model.width, uncertainty=cfg.preset.head)
    student.load_state_dict(learner["student"])
    teacher = None
    if learner.get("teacher") is not None:
        teacher, _ = build_student(cfg.model.name, num_classes, cfg.data.image_size, cfg.model.small_stem, None,
                                   width=cfg.model.width, uncertainty=False)
        teacher.load_state_dict(learner["teacher"]["teacher"])
        teacher.eval()
    return student.eval(), teacher


def forward_share(state: dict, cfg: Config, num_classes: int, shards_dir: str | Path, share: SplitSelection,
                  batch_size: int = 256, device: str = "cpu", num_threads: int | None = None,
                  on_batch: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Logits of the teacher and the student, and the head's alpha, on ``share`` (eval view).

    Returns idx [n] int64 (ascending), student [n, C] float32 logits, teacher [n, C] (absent without a
    teacher), alpha [n] (absent without a head). ``on_batch(rows)`` is called after every batch."""
    import torch

    from soft_dist.data.loader import build_eval_loader

    data_cfg: DataConfig = cfg.data
    if num_threads is not None:
        data_cfg = dataclasses.replace(data_cfg, num_threads=num_threads)
    student, teacher = build_networks(state, cfg, num_classes)
    student.to(device)
    if teacher is not None:
        teacher.to(device)
    head = student.uncertainty is not None
    parts: dict[str, list] = {"idx": [], "student": [], "teacher": [], "alpha": []}
    loader = build_eval_loader(shards_dir, share, data_cfg, batch_size, device="cuda" if device == "cuda" else "cpu")
    try:
        with torch.inference_mode():
            for batch in loader.epoch(0):
                keep = batch.valid.to(device)
                images = batch.image.to(device)
                if head:
                    logits, alpha = student(images, with_alpha=True)
                    parts["alpha"].append(alpha.float().squeeze(-1)[keep].cpu())
                else:
                    logits = student(images)
                parts["student"].append(logits.float()[keep].cpu())
                if teacher is not None:
                    parts["teacher"].append(teacher(images).float()[keep].cpu())
                parts["idx"].append(batch.idx.to(device)[keep].cpu())
                if on_batch is not None:
                    on_batch(int(keep.sum()))
    finally:
        loader.close()
    out = {k: torch.cat(v).numpy() for k, v in parts.items() if v}
    order = np.argsort(out["idx"], kind="stable")
    return {k: v[order] for k, v in out.items()}


# ----------------------------------------------------------------------------- the whole split


def network_outputs(run: AuditRun, workers: int = 1, batch_size: int = 256, device: str = "cpu",
                    num_threads: int | None = None, echo: Callable[[str], None] | None = print) -> NetworkOutputs:
    """Probabilities and head weights of every training sample of ``run``: in this process when
    ``workers`` is 1, else in ``workers`` Ray tasks (on the cluster init_ray joins or starts), each on
    a contiguous share. The rows come back in ascending idx order either way."""
    from soft_dist.metrics import softmax

    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    num_classes = run.manifest.num_classes
    start = time.perf_counter()
    if workers == 1:
        bar = progress_bar(len(run.train.idx), "scoring", "img")
        try:
            raw = forward_share(run.state, run.cfg, num_classes, run.shards_dir, run.train, batch_size, device,
                                num_threads, on_batch=bar.update)
        finally:
            bar.close()
    else:
        raw = _ray_outputs(run, workers, batch_size, num_threads)
    if echo:
        where = "this process" if workers == 1 else f"{workers} Ray tasks"
        echo(f"[audit] scored {len(raw['idx'])} training images in {time.perf_counter() - start:.1f} s ({where})")
    expected = np.sort(run.train.idx)
    if not np.array_equal(raw["idx"], expected):
        raise RuntimeError(f"the scorers returned {len(raw['idx'])} rows for {len(expected)} training samples")
    given, _ = run.given_and_clean(raw["idx"])
    return NetworkOutputs(
        idx=raw["idx"], given=given, student=softmax(raw["student"]),
        teacher=softmax(raw["teacher"]) if "teacher" in raw else None,
        alpha=raw["alpha"].astype(np.float64) if "alpha" in raw and run.head_trained else None)


def _score_share_task(state_ref, cfg_yaml: str, num_classes: int, shards: str, cache_dir, cache_max_gb: float,
                      share: SplitSelection, batch_size: int, num_threads: int | None) -> dict:
    """The body of one Ray task: stage the shards on this node if they are a URL, then forward_share."""
    from soft_dist.config import config_from_yaml as _from_yaml
    from soft_dist.data.stage import local_shards

    cfg = _from_yaml(cfg_yaml, "the audited run's config")
    shards_dir = local_shards(shards, cache_dir, cache_max_gb)
    return forward_share(state_ref, cfg, num_classes, shards_dir, share, batch_size, "cpu", num_threads)


def _ray_outputs(run: AuditRun, workers: int, batch_size: int, num_threads: int | None) -> dict[str, np.ndarray]:
    import ray

    from soft_dist.config import config_yaml
    from soft_dist.ray_cluster import gather, init_ray

    init_ray()
    shares = contiguous_shares(run.train, workers)
    # Only the networks travel (once, through the object store); the optimizer state stays here.
    state_ref = ray.put({"epoch": run.state["epoch"], "learner": {
        "student": run.state["learner"]["student"], "teacher": run.state["learner"].get("teacher")}})
    task = ray.remote(num_cpus=1)(_score_share_task)
    shards = run.cfg.data.shards if run.cfg.data.shards else str(run.shards_dir)
    pending = [task.remote(state_ref, config_yaml(run.cfg), run.manifest.num_classes, shards, run.cfg.data.cache_dir,
                           run.cfg.data.cache_max_gb, share, batch_size, num_threads or 1)
               for share in shares]
    bar = progress_bar(len(pending), "scoring shares", "share")
    try:
        results = gather(pending, bar.update)
    finally:
        bar.close()
    out = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
    order = np.argsort(out["idx"], kind="stable")
    return {k: v[order] for k, v in out.items()}
