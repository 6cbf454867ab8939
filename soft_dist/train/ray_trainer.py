"""Distributed SOFT on Ray Train: the driver (noise table, TorchTrainer, results.json) and the loop that
runs on every worker (DDP student, identical EMA teachers, per-epoch checkpoints and reports).

Run directory layout (RUN_DIR must be on shared storage for multi-node runs):

    config.yaml        the resolved config           noise_table.csv   made once, used by every rank/restart
    metrics.jsonl      one line per epoch            tensorboard/      TensorBoard events
    ray/               Ray Train's run storage: checkpoint_* folders (state.pt) and its own state
    results.json       written when training ends
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from soft_dist.config import Config, ConfigError, from_dict, load_config, save_config, to_dict
from soft_dist.noise import NoiseTable

RAY_RUN_NAME = "ray"
# Worker environment: no print patching (it echoes every line twice), unbuffered output.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "PYTHONUNBUFFERED": "1"}
STATE_FILE = "state.pt"
FAILURE_MARKER = ".failure_injected"


# ============================================================================ worker side


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _ddp_wrapper(device: torch.device, compile_model: bool):
    """Returns wrap(module) for SoftLearner: DDP when distributed, then torch.compile if asked."""
    from torch.nn.parallel import DistributedDataParallel

    from soft_dist.train.distributed import is_distributed

    def wrap(module):
        if is_distributed():
            ids = [device.index] if device.type == "cuda" else None
            # Only parameters that require grad are registered: the head is frozen in stage 1 and
            # the learner re-wraps when it is switched on (no find_unused_parameters needed).
            # broadcast_buffers (the default) starts every forward from rank 0's BN statistics.
            module = DistributedDataParallel(module, device_ids=ids)
        return torch.compile(module) if compile_model else module

    return wrap


def _gathered_reports(learner, loader, num_classes: int, label_lookup=None) -> tuple[dict, dict]:
    """Predictions of every branch on this rank's share, gathered from all ranks -> (reports, preds)."""
    from soft_dist.train.distributed import all_gather_objects
    from soft_dist.train.fit import predictions, reports

    mine = predictions(learner, loader)
    everyone = all_gather_objects(mine)
    merged = {b: tuple(np.concatenate([p[b][i] for p in everyone]) for i in range(3)) for b in mine}
    return reports(merged, num_classes, label_lookup), merged


def worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    from soft_dist.method.model import build_student
    from soft_dist.method.teacher import module_digest
    from soft_dist.train.data import shard_loaders
    from soft_dist.train.distributed import TeacherSync, all_gather_objects, broadcast_from_rank0
    from soft_dist.train.fit import RunLog, epoch_summary_line, final_results, noise_diagnostics, train_epoch
    from soft_dist.train.loop import SoftLearner, choose_branch

    # Ray Train logs every report with its full metrics at INFO: keep the console to our epoch lines.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    cfg = from_dict(config["config"])
    run_dir = Path(config["run_dir"])
    table = NoiseTable(**config["noise_table"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.train.torch_threads or cfg.train.cpus_per_worker)
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")

    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    num_classes = config["num_classes"]
    student, _ = build_student(cfg.model.name, num_classes, cfg.data.image_size, cfg.model.small_stem,
                               cfg.model.pretrained, uncertainty=cfg.preset["head"])
    if cfg.train.sync_batchnorm and world > 1:
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
    student = student.to(device)
    if device.type == "cuda" and cfg.model.channels_last:
        student = student.to(memory_format=torch.channels_last)
    learner = SoftLearner(cfg, student, device, noisy_labels=torch.from_numpy(table.lookup()),
                          wrap=_ddp_wrapper(device, cfg.train.compile))
    sync = None
    if learner.teacher is not None:
        sync = TeacherSync(learner.teacher.teacher, cfg.train.teacher_buffer_sync_every, cfg.train.sync_check_every)

    # ---- resume: Ray's own checkpoint after a worker failure, else the one the driver found (--resume)
    start_epoch, history, state = 0, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=False)
    elif config.get("resume_from"):
        state = torch.load(Path(config["resume_from"]) / STATE_FILE, map_location=device, weights_only=False)
    if state is not None:
        if state["noise_table_sha256"] != table.digest():
            raise RuntimeError("checkpoint was made with a different noise table; refusing to resume")
        learner.load_state_dict(state["learner"])
        _set_rng_state(state["rng"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        if sync is not None:
            sync.checks, sync.mismatches = state["teacher_sync"]["checks"], state["teacher_sync"]["mismatches"]
    elif sync is not None:
        sync.broadcast_from_rank0()

    loaders = shard_loaders(cfg, rank, world, device.type)
    log = RunLog(run_dir) if rank == 0 else None
    fail_marker = run_dir / FAILURE_MARKER

    def on_step(step: int) -> None:
        if sync is not None:
            sync.after_step(step)
        if cfg.train.fail_at_step is not None and step == cfg.train.fail_at_step and rank == 0:
            if not fail_marker.exists():
                fail_marker.touch()
                print(f"[soft-dist] injected failure: rank 0 exits at step {step}", flush=True)
                os._exit(1)  # a real process death, not an exception

    val_lookup = table.lookup() if cfg.data.val_labels == "noisy" else None
    train_seconds = 0.0  # in this process (a restarted worker starts again from 0)
    for epoch in range(start_epoch, cfg.train.epochs):
        train = train_epoch(learner, loaders.train, epoch, on_step=on_step)
        train_seconds += train["seconds"]
        speeds = all_gather_objects(train["images_per_s"])
        broadcast_from_rank0(learner.student)  # every rank evaluates and would checkpoint the same student
        val, _ = _gathered_reports(learner, loaders.val, num_classes, val_lookup)
        test = _gathered_reports(learner, loaders.test, num_classes)[0] if loaders.test is not None else None
        if sync is not None:
            sync.check()  # before every checkpoint
        digests = all_gather_objects(module_digest(learner.teacher.teacher)) if learner.teacher is not None else []
        last = epoch == cfg.train.epochs - 1
        diagnostics = None
        if last and loaders.train_eval is not None:
            _, train_preds = _gathered_reports(learner, loaders.train_eval, num_classes)
            diagnostics = noise_diagnostics(train_preds, table)
        record = {
            "train": train, "val": val, "test": test, "head": learner.head_on,
            "lr": learner.optimizer.param_groups[0]["lr"],
            "images_per_s_per_worker": speeds,
            "teacher_sync": sync.summary() if sync is not None else None,
        }
        history.append({"epoch": epoch, "images_per_s_per_worker": speeds, "seconds": train["seconds"]})
        chosen_now = choose_branch(val, cfg.train.select_metric)
        metrics = {"epoch": epoch, "val": val, "test": test, "train": train, "teacher_digests": digests,
                   "teacher_sync": record["teacher_sync"],
                   # flat keys for Ray Tune: the branch validation would choose now
                   "val_accuracy": val[chosen_now]["accuracy"],
                   "val_mean_class_accuracy": val[chosen_now]["mean_class_accuracy"]}
        if last:
            all_speeds = [s for h in history for s in h["images_per_s_per_worker"]]
            teacher_sync = None
            if sync is not None:
                # Share of this process's training time spent in teacher synchronisation (buffer
                # all-reduce + checksum checks), measured around those calls with perf_counter.
                teacher_sync = {**sync.summary(), "share_of_train_time": sync.seconds / max(train_seconds, 1e-9)}
            metrics["results"] = final_results(
                cfg, val, test, table, diagnostics,
                throughput={"images_per_s_per_worker": float(np.median(all_speeds)), "workers": world,
                            "images_per_s_total": float(np.median([sum(h["images_per_s_per_worker"]) for h in history])),
                            "per_epoch_images_per_s": [float(np.mean(h["images_per_s_per_worker"])) for h in history]},
                epochs_run=epoch + 1, wall_time_s=sum(h["seconds"] for h in history),
                teacher_sync=teacher_sync,
            )
        if rank == 0:
            log.log(epoch, record)
            print(epoch_summary_line(epoch, cfg.train.epochs, train, val), flush=True)
            with tempfile.TemporaryDirectory() as folder:
                torch.save({
                    "learner": learner.state_dict(), "epoch": epoch, "rng": _rng_state(), "history": history,
                    "config": to_dict(cfg), "noise_table_sha256": table.digest(),
                    "teacher_sync": sync.summary() if sync is not None else None,
                }, Path(folder) / STATE_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)
    if log is not None:
        log.close()
    loaders.close()


# ============================================================================ driver side


def make_noise_table(cfg: Config) -> tuple[NoiseTable, int]:
    """The run's noise table (made once from the shards' clean labels, or read from noise.file)."""
    from soft_dist.data.format import load_manifest
    from soft_dist.data.labels import read_split_labels
    from soft_dist.data.stage import local_shards
    from soft_dist.noise import build_noise_table as build

    if not cfg.data.shards:
        raise ConfigError("data.shards", "set it to a folder written by `soft-dist shard` (with manifest.json)")
    manifest = load_manifest(local_shards(cfg.data.shards, cfg.data.cache_dir, cfg.data.cache_max_gb))
    if cfg.noise.kind == "file":
        return NoiseTable.load(cfg.noise.file), manifest.num_classes
    splits = {s: read_split_labels(manifest, s) for s in (cfg.data.train_split, cfg.data.val_split)}
    class_map = _resolve_class_map(cfg, manifest.classes)
    table = build(splits, manifest.num_classes, cfg.noise.kind, cfg.noise.rate, cfg.noise.seed, class_map)
    return table, manifest.num_classes


def _resolve_class_map(cfg: Config, classes: tuple[str, ...]) -> dict[int, int] | None:
    """noise.class_map by class name or index, or from noise.confusion_file; None for symmetric."""
    if cfg.noise.kind != "asymmetric":
        return None
    if cfg.noise.confusion_file:
        from soft_dist.noise import class_map_from_confusion

        return class_map_from_confusion(np.loadtxt(cfg.noise.confusion_file, delimiter=","))
    if not cfg.noise.class_map:
        raise ConfigError("noise.class_map", "asymmetric noise needs noise.class_map or noise.confusion_file")
    index = {name: i for i, name in enumerate(classes)}

    def resolve(key) -> int:
        if isinstance(key, int) or str(key).isdigit():
            value = int(key)
            if 0 <= value < len(classes):
                return value
        elif str(key) in index:
            return index[str(key)]
        raise ConfigError("noise.class_map", f"unknown class {key!r}; classes are {list(classes)}")

    return {resolve(k): resolve(v) for k, v in cfg.noise.class_map.items()}


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder under RUN_DIR/ray (by the epoch stored in it)."""
    best, best_epoch = None, -1
    for folder in (run_dir / RAY_RUN_NAME).glob("checkpoint_*"):
        state_path = folder / STATE_FILE
        if state_path.is_file():
            epoch = torch.load(state_path, map_location="cpu", weights_only=False)["epoch"]
            if epoch > best_epoch:
                best, best_epoch = folder, epoch
    return best


def build_trainer(
    cfg: Config,
    run_dir: Path,
    table: NoiseTable,
    num_classes: int,
    resume_from: Path | None = None,
    callbacks: list | None = None,
):
    """The TorchTrainer for one run (also built per trial by the sweep, with Tune's report callback)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        worker_loop,
        train_loop_config={
            "config": to_dict(cfg),
            "run_dir": str(run_dir),
            "num_classes": num_classes,
            "noise_table": {"idx": table.idx, "clean": table.clean, "noisy": table.noisy,
                            "kind": table.kind, "rate": table.rate, "seed": table.seed},
            "resume_from": str(resume_from) if resume_from else None,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.train.workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=RAY_RUN_NAME,
            storage_path=str(run_dir),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": WORKER_ENV},
            callbacks=list(callbacks or []),
        ),
    )


def run_training(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    """Train ``cfg`` with Ray Train into ``run_dir``; returns (and writes) results.json."""
    run_dir = Path(run_dir).resolve()
    config_path = run_dir / "config.yaml"
    table_path = run_dir / "noise_table.csv"
    resume_from = None
    if resume:
        if not config_path.is_file() or not table_path.is_file():
            raise ConfigError("--resume", f"{run_dir} is not a run directory (no config.yaml / noise_table.csv)")
        table = NoiseTable.load(table_path)
        resume_from = latest_checkpoint(run_dir)
        from soft_dist.data.format import load_manifest

        num_classes = load_manifest(cfg.data.shards).num_classes
    else:
        if (run_dir / RAY_RUN_NAME).exists():
            raise ConfigError("--run-dir", f"{run_dir} already holds a run; use `soft-dist train --resume {run_dir}`")
        table, num_classes = make_noise_table(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, config_path)
        table.save(table_path)
        (run_dir / FAILURE_MARKER).unlink(missing_ok=True)  # failure injection fires once per run

    from soft_dist.ray_cluster import init_ray

    init_ray()
    trainer = build_trainer(cfg, run_dir, table, num_classes, resume_from=resume_from)
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    metrics = result.metrics or {}
    if "results" not in metrics:
        raise RuntimeError(f"training ended without final results (last metrics: {sorted(metrics)})")
    results = metrics["results"]
    results["teacher_digests"] = metrics.get("teacher_digests", [])
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def resume_training(run_dir: str | Path, overrides: list[str] | None = None) -> dict:
    """`soft-dist train --resume RUN_DIR`: the saved config (plus overrides), the saved noise table,
    from the latest checkpoint."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", overrides or [])
    return run_training(cfg, run_dir, resume=True)
