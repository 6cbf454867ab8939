"""The run loop: :class:`Trainer` takes a run from "here are the loaders" to "here is results.json".

It builds the learner (soft_dist.train.step), resumes, and for every epoch trains and evaluates
(train.epoch), keeps the teachers identical across ranks (train.teacher_sync), chooses model.pt on
validation (train.selection), records the epoch (train.runlog) and checkpoints it (train.checkpoints).
Which rank writes what is settled once, in the constructor: rank 0 gets the objects that write, the other
ranks objects that keep the same record and write nothing. The loop itself has no rank conditionals, so
every rank makes the same collective calls in the same order (one that only some ranks reach blocks DDP).

Two thin adapters say where this process stands and how an epoch leaves it: ``train/local.py`` (one
process, checkpoints written straight into the run) and ``train/ray_trainer.py`` (a Ray Train worker: DDP
wrapping, ``ray.train.report``). No Ray and no DALI are imported here; collectives go through
``train/collectives.py`` and are no-ops in one process.

Run directory (a local folder or s3://bucket/prefix, see soft_dist.storage)::

    config.yaml  noise_table.csv   written by the driver before training
    metrics.jsonl                  one JSON line per epoch (rewritten atomically; after a resume it holds
                                   every epoch exactly once)
    tensorboard/                   TensorBoard events
    checkpoints/epoch_NNNN/        the newest complete resumable state (state.pt + meta.json); Ray
                                   Train's own bookkeeping files live beside it
    checkpoints/epoch_NNNN_step_SSSSSS/   with train.checkpoint_every_steps: the newest mid-epoch state
    sample_trace/                  with train.trace_samples: every step's samples (train.sample_trace)
    model.pt                       the best epoch on validation (weights of the chosen branch + metadata)
    results.json                   written when the last epoch ends
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from soft_dist.config import Config, resolve_for_classes
from soft_dist.data.loader import Loaders
from soft_dist.method.model import build_student
from soft_dist.method.lock_in import lock_in_note
from soft_dist.noise.table import NoiseTable
from soft_dist.storage import RunStore
from soft_dist.train.checkpoints import CheckpointWriter, Checkpoints, ReportFn, put_into_run, seed_everything
from soft_dist.train.collectives import all_gather_objects, broadcast_from_rank0, broadcast_object_from_rank0
from soft_dist.train.epoch import EpochProgress, StepHook, evaluate, noise_diagnostics, train_epoch
from soft_dist.train.protocols import choose_branch
from soft_dist.train.results import run_results
from soft_dist.train.runlog import RunLog, SilentLog, read_metrics, read_results
from soft_dist.train.sample_trace import SampleTrace
from soft_dist.train.selection import DatasetInfo, ModelSelection, ModelWriter, model_epoch_rule
from soft_dist.train.step import SoftLearner
from soft_dist.train.teacher_sync import NoTeacherSync, TeacherSync, teacher_sync

FAILURE_MARKER = ".failure_injected"


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


class Trainer:
    """Trains ``cfg`` on ``loaders`` (this rank's share) into the run ``store``; see the module docstring.

    ``report`` hands each epoch to the launcher (default: rank 0's checkpoint goes straight into the run),
    ``restored`` is a state the launcher handed over, ``echo`` gets rank 0's console lines."""

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
        self.num_classes = len(data.classes)
        # Launchers resolve before they save config.yaml; this keeps a Trainer built directly runnable.
        cfg = resolve_for_classes(cfg, self.num_classes)
        self.cfg, self.store, self.table, self.loaders = cfg, store, table, loaders
        self.place = placement
        chief = placement.is_chief  # rank 0 writes the run's files; the other ranks keep the same record
        self.log = RunLog(store, cfg.train.epochs, echo) if chief else SilentLog()
        self.checkpoints = (CheckpointWriter if chief else Checkpoints)(
            store, report or put_into_run(store), cfg, table.digest(), restored, self.log.say)
        self.selection = (ModelWriter(cfg, store, table, data) if chief
                          else ModelSelection(cfg.train.select_metric, model_epoch_rule(cfg)))
        self.fail_at_step = cfg.train.fail_at_step if chief else None  # failure injection: rank 0 dies
        self.progress = progress and chief

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict:
        """Train the remaining epochs; returns the results record (written to results.json by rank 0)."""
        cfg, loaders, world_size = self.cfg, self.loaders, self.place.world_size
        learner, weights = self._build_learner()
        sync = teacher_sync(learner.teacher, cfg.train)
        epochs_done, history, best, partial = self.checkpoints.resume(learner, sync)
        partial = EpochProgress.from_state(partial) if partial is not None else None
        if partial is not None:
            self.log.say(f"resumed after epoch {epochs_done} and {partial.steps} steps of epoch {epochs_done + 1} "
                         f"(world size {world_size})")
        elif epochs_done > 0:
            self.log.say(f"resumed after epoch {epochs_done} (world size {world_size})")
        else:
            sync.broadcast_from_rank0()
        self.selection.resume(best, epochs_done, learner)
        if epochs_done >= cfg.train.epochs:
            return self._report_finished_run()
        self.log.start(epochs_done)
        trace = self._sample_trace((epochs_done, partial.steps if partial else 0))
        on_step = self._on_step(sync, trace)
        val_lookup = self.table.lookup() if cfg.data.val_labels == "noisy" else None
        train_seconds = 0.0  # in this process (a restarted worker starts again from 0)
        checkpoint_seconds: list[float] = []  # each epoch checkpoint's save in this process (report included)
        for index in range(epochs_done, cfg.train.epochs):
            # Epochs are numbered from 1 in every file and message (metrics.jsonl, results.json, model.pt,
            # checkpoints/epoch_NNNN, the console): ``epoch`` is the count of epochs done after this one.
            # The method's schedules (ramp-up, stage 1, SLS start) take the 0-based ``index``.
            epoch = index + 1
            resume = partial if index == epochs_done else None

            def at_checkpoint(progress: EpochProgress, done: int = index) -> None:
                self.checkpoints.save_step(done, progress.state(), learner, sync, history, self.selection.state())

            train = train_epoch(learner, loaders.train, index, on_step=on_step, progress=self.progress,
                                resume=resume, checkpoint_every=cfg.train.checkpoint_every_steps,
                                at_checkpoint=at_checkpoint)
            train_seconds += train["seconds"] - (resume.seconds if resume else 0.0)  # this process's part
            speeds, images = zip(*all_gather_objects((train["images_per_s"], train["images"])))
            speeds = list(speeds)
            broadcast_from_rank0(learner.student)  # every rank evaluates and would checkpoint the same student
            sync.end_epoch()  # ... and the same teacher
            val = evaluate(learner, loaders.val, self.num_classes, val_lookup)
            test = evaluate(learner, loaders.test, self.num_classes) if loaders.test is not None else None
            pool = learner.end_epoch(epoch, val, cfg.train.select_metric)  # after the teachers are synced
            sync.check()  # before every checkpoint
            digests = sync.digests()
            # val/test ride in the history because it survives a resume inside the checkpoint, while
            # metrics.jsonl is cut back on resume: the protocols of results.json read the history.
            # The k > 1 share rides there too, so the SLS guards see every epoch after a resume.
            history.append({"epoch": epoch, "images_per_s_per_worker": speeds, "seconds": train["seconds"],
                            "world_size": world_size, "val": val, "test": test,
                            "share_k_gt_1": train.get("share_k_gt_1")})
            best = self.selection.consider(epoch, val, test, learner)
            last = epoch == cfg.train.epochs
            results = self._results(learner, weights, sync, val, test, history, train_seconds, digests,
                                    checkpoint_seconds) if last else {}
            self.log.record(epoch, {
                "train": train, "val": val, "val_labels": cfg.data.val_labels, "test": test, "head": learner.head_on,
                "lr": learner.optimizer.param_groups[0]["lr"], "world_size": world_size,
                # valid rows trained on by all ranks: the split's size whatever the world size (with
                # those trained before a mid-epoch resume)
                "images_all_ranks": (resume.samples if resume else 0) + int(sum(images)),
                "images_per_s_per_worker": speeds,
                "teacher_sync": sync.summary(), "selected_epoch": best["epoch"],
                **({"teacher_pool": pool} if pool is not None else {}),
                **self._sls_guards(history)})
            if last:
                self.log.finish(results)
            began = time.perf_counter()
            self.checkpoints.save(epoch, self._launcher_metrics(epoch, val, last), learner, sync, history,
                                  self.selection.state())
            checkpoint_seconds.append(time.perf_counter() - began)
            self.selection.commit()  # model.pt only once the epoch it holds is in a committed checkpoint
        self.log.close()
        if trace is not None:
            trace.close()
        return results

    # ------------------------------------------------------------------ its pieces
    def _sls_guards(self, history: list[dict]) -> dict:
        """{"note": the lock-in warning} at the epoch where the k > 1 share collapses
        (soft_dist.method.lock_in), else {}."""
        method = self.cfg.method
        shares = [h.get("share_k_gt_1") for h in history]
        watch_from = max(math.ceil(method.rampup_epochs), method.sls_start_epoch)
        note = lock_in_note(shares, method.tau, self.num_classes, watch_from)
        return {"note": note} if note else {}

    def _build_learner(self) -> tuple[SoftLearner, object]:
        cfg, device = self.cfg, self.place.device
        seed_everything(cfg.train.seed)  # identical initial weights on every rank
        student, weights = build_student(cfg.model.name, self.num_classes, cfg.data.image_size,
                                         cfg.model.small_stem, cfg.model.pretrained, width=cfg.model.width,
                                         uncertainty=cfg.preset.head)
        student = student.to(device)
        if device.type == "cuda" and cfg.model.channels_last:
            student = student.to(memory_format=torch.channels_last)
        learner = SoftLearner(cfg, student, device, noisy_labels=torch.from_numpy(self.table.lookup()),
                              wrap=self.place.wrap,
                              sync_batchnorm=cfg.train.sync_batchnorm and self.place.world_size > 1)
        return learner, weights

    def _sample_trace(self, resumed_from: tuple[int, int]) -> SampleTrace | None:
        """This process's trace (train.trace_samples), tagged with a token every rank of this start shares."""
        if not self.cfg.train.trace_samples:
            return None
        attempt = broadcast_object_from_rank0(os.urandom(8).hex())  # a collective: every rank calls it
        return SampleTrace(self.store, self.place.rank, resumed_from, attempt)

    def _on_step(self, sync: TeacherSync | NoTeacherSync, trace: SampleTrace | None) -> StepHook:
        store, fail_at_step = self.store, self.fail_at_step

        def on_step(global_step: int, epoch_index: int, step: int, batch) -> None:
            sync.after_step(global_step)
            if trace is not None:
                trace.step(epoch_index + 1, step, batch)
            if global_step == fail_at_step and not store.exists(FAILURE_MARKER):
                store.write_text(FAILURE_MARKER, f"rank 0 exited at step {global_step}\n")
                os._exit(1)  # a real process death, not an exception

        return on_step

    def _launcher_metrics(self, epoch: int, val: dict, last: bool) -> dict:
        """What the launcher is told each epoch: flat keys (for Ray Tune), with the validation numbers of
        the branch validation would choose now."""
        chosen = choose_branch(val, self.cfg.train.select_metric)
        return {"epoch": epoch, "world_size": self.place.world_size, "done": last,
                "val_accuracy": val[chosen]["accuracy"], "val_mean_class_accuracy": val[chosen]["mean_class_accuracy"]}

    def _report_finished_run(self) -> dict:
        """Resumed after the last epoch's checkpoint (the launcher stopped before hearing of it): tell
        the launcher about that epoch again instead of training nothing and saying nothing."""
        last = read_metrics(self.store)[-1]
        self.checkpoints.report_again(last["epoch"], self._launcher_metrics(last["epoch"], last["val"], True))
        return read_results(self.store)

    def _results(self, learner: SoftLearner, weights, sync, val: dict, test: dict | None, history: list,
                 train_seconds: float, digests: list, checkpoint_seconds: list[float]) -> dict:
        """The last epoch's results record; the noise diagnostics evaluate the training split (every rank).
        ``checkpoint_seconds``: the saves of this process's epochs before the last (the last one's save
        follows the record)."""
        diagnostics = None
        if self.loaders.train_eval is not None:
            diagnostics = noise_diagnostics(learner, self.loaders.train_eval, self.table)
        return run_results(self.cfg, self.table, self.store, val=val, test=test,
                           diagnostics=diagnostics, history=history, world_size=self.place.world_size,
                           teacher_sync=sync.results(train_seconds), model=self.selection.best,
                           teacher_digests=digests, weights=weights, checkpoint_seconds=checkpoint_seconds)
