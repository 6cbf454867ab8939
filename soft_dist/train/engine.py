"""The one training engine. :class:`Trainer` owns everything a run does between "here are the loaders"
and "here is results.json": seeding, building the learner, resuming, the epoch loop, evaluation,
logging, checkpoints, choosing model.pt on validation and the results record.

Two thin adapters use it and only say where this process stands and how an epoch leaves it:
``train/single.py`` (one process, checkpoints written straight into the run) and
``train/ray_trainer.py`` (a Ray Train worker: DDP wrapping, ``ray.train.report``). No Ray and no DALI
are imported here; collectives go through ``train/collectives.py`` and are no-ops in one process.

Run directory (a local folder or s3://bucket/prefix, see soft_dist.storage)::

    config.yaml  noise_table.csv   written by the driver before training
    metrics.jsonl                  one JSON line per epoch (rewritten atomically; after a resume it holds
                                   every epoch exactly once)
    tensorboard/                   TensorBoard events
    checkpoints/epoch_NNNN/        the newest complete resumable state (state.pt + meta.json); Ray
                                   Train's own bookkeeping files live beside it
    model.pt                       the best epoch on validation (weights of the chosen branch + metadata)
    results.json                   written when the last epoch ends
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from soft_dist.config import Config, config_yaml, to_dict
from soft_dist.data.loader import Loaders
from soft_dist.method.model import build_student, resolve_small_stem
from soft_dist.method.teacher import module_digest
from soft_dist.noise.table import NoiseTable
from soft_dist.storage import RunStore
from soft_dist.train import checkpoints as ckpt
from soft_dist.train import model_file
from soft_dist.train.collectives import all_gather_objects, broadcast_from_rank0
from soft_dist.train.teacher_sync import TeacherSync
from soft_dist.train.epoch import noise_diagnostics, predictions, reports, train_epoch
from soft_dist.train.protocols import choose_branch, compute_protocols
from soft_dist.train.results import final_results
from soft_dist.train.runlog import METRICS_FILE, RunLog, epoch_summary_line, read_metrics
from soft_dist.train.step import SoftLearner

RESULTS_FILE = "results.json"
FAILURE_MARKER = ".failure_injected"

# report(metrics, checkpoint_folder, epoch): hand one epoch's flat metrics on and, on rank 0, make the
# local checkpoint folder durable as RUN/checkpoints/epoch_NNNN before returning (other ranks get None).
ReportFn = Callable[[dict, "Path | None", int], None]


@dataclass(frozen=True)
class Placement:
    """Where this process stands in the run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    # Builds the module the student's forward pass goes through (e.g. DDP); None: the student itself.
    wrap: Callable[[nn.Module], nn.Module] | None = None

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class DatasetInfo:
    """What model.pt must carry about the data it was trained on."""

    classes: tuple[str, ...]
    dataset: str = "unknown"
    alignment: dict = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, manifest) -> "DatasetInfo":
        args = manifest.raw.get("args", {})
        align = manifest.raw.get("alignment", {})
        return cls(tuple(manifest.classes), manifest.dataset,
                   {"method": align.get("method", "none"), "margin": align.get("margin"),
                    "shard_image_size": args.get("size"), "on_no_face": args.get("on_no_face"),
                    # predict re-encodes aligned photos at this quality, so they match the shards' pixels
                    "jpeg_quality": args.get("quality")})

    @classmethod
    def unnamed(cls, num_classes: int) -> "DatasetInfo":
        return cls(tuple(str(i) for i in range(num_classes)))


def write_run_inputs(store: RunStore, cfg: Config, table: NoiseTable) -> None:
    """The driver's part of a new run: the resolved config and the noise table every rank uses."""
    store.write_text("config.yaml", config_yaml(cfg))
    store.write_text("noise_table.csv", table.to_csv())


class Trainer:
    """Trains ``cfg`` on ``loaders`` (this rank's share) into the run ``store``; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        store: RunStore,
        table: NoiseTable,
        data: DatasetInfo,
        loaders: Loaders,
        placement: Placement = Placement(),
        report: ReportFn | None = None,
        restored: dict | None = None,
        echo: Callable[[str], None] | None = None,
        progress: bool = False,
    ):
        self.cfg, self.store, self.table, self.data, self.loaders = cfg, store, table, data, loaders
        self.place = placement
        self.num_classes = len(data.classes)
        self.report = report or self._save_checkpoint_here
        self.restored = restored  # a state handed over by the launcher (Ray Train's checkpoint)
        self.echo = echo if placement.is_chief else None
        self.progress = progress and placement.is_chief

    # ------------------------------------------------------------------ set-up
    def _build_learner(self) -> tuple[SoftLearner, object]:
        cfg, device = self.cfg, self.place.device
        ckpt.seed_everything(cfg.train.seed)  # identical initial weights on every rank
        student, weights = build_student(cfg.model.name, self.num_classes, cfg.data.image_size,
                                         cfg.model.small_stem, cfg.model.pretrained, uncertainty=cfg.preset.head)
        if cfg.train.sync_batchnorm and self.place.world_size > 1:
            student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
        student = student.to(device)
        if device.type == "cuda" and cfg.model.channels_last:
            student = student.to(memory_format=torch.channels_last)
        learner = SoftLearner(cfg, student, device, noisy_labels=torch.from_numpy(self.table.lookup()),
                              wrap=self.place.wrap)
        return learner, weights

    def _resume_state(self) -> dict | None:
        """The newest complete state: the launcher's, or the newest complete one in the run directory
        (Ray may not have registered the last checkpoint a dying worker wrote)."""
        on_disk = ckpt.latest_state(self.store, skipped=self._say)
        candidates = [s for s in (self.restored, on_disk) if s is not None]
        if not candidates:
            return None
        state = max(candidates, key=lambda s: s["epoch"])
        if state["noise_table_sha256"] != self.table.digest():
            raise ckpt.CheckpointError(f"{self.store.path(ckpt.CHECKPOINTS_DIR)}: the checkpoint was made with "
                                       "a different noise table; refusing to resume")
        return state

    def _best_so_far(self) -> dict | None:
        """model.pt's selection record: the run's best so far is whatever model.pt holds."""
        if not self.store.exists(model_file.MODEL_FILE):
            return None
        return model_file.load_model(self.store.path(model_file.MODEL_FILE)).meta["selection"]

    def _say(self, text: str) -> None:
        if self.echo is not None:
            self.echo(text)

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        """Train the remaining epochs; returns the results record (written to results.json by rank 0)."""
        cfg, place, table = self.cfg, self.place, self.table
        learner, weights = self._build_learner()
        sync = None
        if learner.teacher is not None:
            sync = TeacherSync(learner.teacher.teacher, cfg.train.teacher_buffer_sync_every, cfg.train.sync_check_every)
        state = self._resume_state()
        start_epoch, history = 0, []
        if state is not None:
            learner.load_state_dict(state["learner"])
            ckpt.set_rng_state(state["rng"])
            start_epoch, history = state["epoch"] + 1, state["history"]
            if sync is not None:
                sync.checks, sync.mismatches = state["teacher_sync"]["checks"], state["teacher_sync"]["mismatches"]
            self._say(f"resumed from epoch {state['epoch'] + 1} (world size {place.world_size})")
        elif sync is not None:
            sync.broadcast_from_rank0()
        if start_epoch >= cfg.train.epochs:
            return self._report_finished_run()
        # Only rank 0 writes model.pt, so only it needs to know the best epoch so far.
        best = self._best_so_far() if start_epoch > 0 and place.is_chief else None
        log = RunLog(self.store, start_epoch) if place.is_chief else None
        on_step = self._on_step(sync)
        val_lookup = table.lookup() if cfg.data.val_labels == "noisy" else None
        train_seconds = 0.0  # in this process (a restarted worker starts again from 0)
        results: dict = {}
        for epoch in range(start_epoch, cfg.train.epochs):
            train = train_epoch(learner, self.loaders.train, epoch, on_step=on_step, progress=self.progress)
            train_seconds += train["seconds"]
            speeds, images = zip(*all_gather_objects((train["images_per_s"], train["images"])))
            speeds = list(speeds)
            broadcast_from_rank0(learner.student)  # every rank evaluates and would checkpoint the same student
            val = self._evaluate(learner, self.loaders.val, val_lookup)[0]
            test = self._evaluate(learner, self.loaders.test)[0] if self.loaders.test is not None else None
            if sync is not None:
                sync.check()  # before every checkpoint
            digests = all_gather_objects(module_digest(learner.teacher.teacher)) if learner.teacher is not None else []
            chosen = choose_branch(val, cfg.train.select_metric)
            score = val[chosen][cfg.train.select_metric]
            # val/test ride in the history because it survives a resume inside the checkpoint, while
            # metrics.jsonl is cut back on resume: the protocols of results.json read the history.
            history.append({"epoch": epoch, "images_per_s_per_worker": speeds, "seconds": train["seconds"],
                            "world_size": place.world_size, "val": val, "test": test})
            if best is None or score > best["score"]:
                best = {"epoch": epoch, "branch": chosen, "score": score, "metric": cfg.train.select_metric,
                        "val": val[chosen], "test": test[chosen] if test else None}
                if place.is_chief:
                    self._save_model(learner, best)
            last = epoch == cfg.train.epochs - 1
            record = {"train": train, "val": val, "test": test, "head": learner.head_on,
                      "lr": learner.optimizer.param_groups[0]["lr"], "world_size": place.world_size,
                      # valid rows trained on by all ranks: the split's size whatever the world size
                      "images_all_ranks": int(sum(images)),
                      "images_per_s_per_worker": speeds,
                      "teacher_sync": sync.summary() if sync is not None else None, "selected_epoch": best["epoch"]}
            if last:
                diagnostics = None
                if self.loaders.train_eval is not None:
                    diagnostics = noise_diagnostics(self._evaluate(learner, self.loaders.train_eval)[1], table)
                results = self._results(val, test, diagnostics, history, train_seconds, sync, best, digests, weights)
            if log is not None:
                log.log(epoch, record)
                if self.echo is not None:
                    self.echo(epoch_summary_line(epoch, cfg.train.epochs, train, val))
                if last:
                    self.store.write_text(RESULTS_FILE, json.dumps(results, indent=2))
            self._checkpoint(learner, sync, epoch, history, self._flat_metrics(epoch, val, last))
        if log is not None:
            log.close()
        return results

    # ------------------------------------------------------------------ pieces of an epoch
    def _flat_metrics(self, epoch: int, val: dict, last: bool) -> dict:
        """What the launcher is told each epoch: flat keys (for Ray Tune), with the validation numbers of
        the branch validation would choose now."""
        chosen = choose_branch(val, self.cfg.train.select_metric)
        return {"epoch": epoch, "world_size": self.place.world_size, "done": last,
                "val_accuracy": val[chosen]["accuracy"], "val_mean_class_accuracy": val[chosen]["mean_class_accuracy"]}

    def _report_finished_run(self) -> dict:
        """Resumed after the last epoch's checkpoint (the launcher stopped before hearing of it): tell
        the launcher about that epoch again instead of training nothing and saying nothing."""
        last = read_metrics(self.store)[-1]
        self.report(self._flat_metrics(last["epoch"], last["val"], True), None, last["epoch"])
        return json.loads(self.store.read_text(RESULTS_FILE)) if self.store.exists(RESULTS_FILE) else {}

    def _on_step(self, sync: TeacherSync | None) -> Callable[[int], None]:
        cfg, store, chief = self.cfg, self.store, self.place.is_chief

        def on_step(step: int) -> None:
            if sync is not None:
                sync.after_step(step)
            if cfg.train.fail_at_step is not None and step == cfg.train.fail_at_step and chief:
                if not store.exists(FAILURE_MARKER):
                    store.write_text(FAILURE_MARKER, f"rank 0 exited at step {step}\n")
                    os._exit(1)  # a real process death, not an exception

        return on_step

    def _evaluate(self, learner: SoftLearner, loader, label_lookup=None) -> tuple[dict, dict]:
        """Every branch's predictions on this rank's share, gathered from all ranks -> (reports, preds)."""
        mine = predictions(learner, loader)
        everyone = all_gather_objects(mine)
        merged = {b: tuple(np.concatenate([p[b][i] for p in everyone]) for i in range(3)) for b in mine}
        return reports(merged, self.num_classes, label_lookup), merged

    def _save_model(self, learner: SoftLearner, best: dict) -> None:
        cfg, data = self.cfg, self.data
        module = learner.branches()[best["branch"]]
        meta = {
            "classes": list(data.classes), "dataset": data.dataset, "num_classes": self.num_classes,
            "image_size": cfg.data.image_size, "mean": list(cfg.data.mean), "std": list(cfg.data.std),
            "channel_order": "RGB", "eval_crop_fraction": cfg.data.eval_crop_fraction,
            "alignment": dict(data.alignment),
            "architecture": {"name": cfg.model.name, "small_stem": resolve_small_stem(cfg.model.small_stem,
                                                                                      cfg.data.image_size)},
            "branch": best["branch"], "epoch": best["epoch"], "method": cfg.method.name,
            "noise": {"kind": self.table.kind, "rate": self.table.rate, "seed": self.table.seed},
            "config_sha256": model_file.config_digest(to_dict(cfg)), "config": to_dict(cfg),
            "selection": best,
        }
        model_file.save_model(self.store, model_file.branch_weights(module), meta)

    def _checkpoint(self, learner, sync, epoch: int, history: list, metrics: dict) -> None:
        """Report the epoch; rank 0 also writes the resumable state, then drops older checkpoints."""
        if not self.place.is_chief:
            self.report(metrics, None, epoch)
            return
        state = {"learner": learner.state_dict(), "epoch": epoch, "rng": ckpt.rng_state(), "history": history,
                 "config": to_dict(self.cfg), "noise_table_sha256": self.table.digest(),
                 "teacher_sync": sync.summary() if sync is not None else {"checks": 0, "mismatches": 0}}
        with ckpt.scratch_folder(self.store) as folder:
            self.report(metrics, ckpt.write_state_folder(state, Path(folder)), epoch)
        ckpt.prune_checkpoints(self.store, keep_epoch=epoch)

    def _save_checkpoint_here(self, metrics: dict, folder: Path | None, epoch: int) -> None:
        """The report of a run without a launcher: put the checkpoint into the run directory."""
        if folder is not None:
            ckpt.save_checkpoint(self.store, folder, epoch)

    def _epoch_records(self, history: list) -> list[dict]:
        """{epoch, val, test} of every epoch of the run, from the history; epochs trained by a version that
        did not keep val/test in the history (resumed from its checkpoint) come from metrics.jsonl."""
        if all("val" in h for h in history):
            return [{"epoch": h["epoch"], "val": h["val"], "test": h["test"]} for h in history]
        logged = {r["epoch"]: r for r in read_metrics(self.store)}
        records = []
        for h in history:
            source = h if "val" in h else logged.get(h["epoch"])
            if source is None:
                raise ckpt.CheckpointError(f"{self.store.path(METRICS_FILE)}: epoch {h['epoch']} is in the "
                                           "checkpoint's history but neither it nor metrics.jsonl has its val/test")
            records.append({"epoch": h["epoch"], "val": source["val"], "test": source.get("test")})
        return records

    def _results(self, val, test, diagnostics, history, train_seconds, sync, best, digests, weights) -> dict:
        cfg = self.cfg
        all_speeds = [s for h in history for s in h["images_per_s_per_worker"]]
        teacher_sync = None
        if sync is not None:
            # Share of this process's training time spent in teacher synchronisation (buffer all-reduce
            # and checksum checks), measured around those calls with perf_counter.
            teacher_sync = {**sync.summary(), "share_of_train_time": sync.seconds / max(train_seconds, 1e-9)}
        results = final_results(
            cfg, val, test, self.table, diagnostics,
            throughput={"images_per_s_per_worker": float(np.median(all_speeds)),
                        "workers": self.place.world_size,
                        "images_per_s_total": float(np.median([sum(h["images_per_s_per_worker"]) for h in history])),
                        "per_epoch_images_per_s": [float(np.mean(h["images_per_s_per_worker"])) for h in history],
                        "world_size_per_epoch": [h.get("world_size", 1) for h in history]},
            epochs_run=len(history), wall_time_s=sum(h["seconds"] for h in history), teacher_sync=teacher_sync,
        )
        results["model"] = {"file": model_file.MODEL_FILE, **best}
        results["protocols"] = compute_protocols(self._epoch_records(history), cfg.train.select_metric)
        results["teacher_digests"] = digests
        if weights is not None:
            results["pretrained"] = {"source": weights.source, "unexpected_keys": weights.unexpected}
        return results
