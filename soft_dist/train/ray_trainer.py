"""SOFT on Ray Train: the worker adapter around the run loop, and the driver (noise table,
TorchTrainer, console, results.json).

Every worker runs :class:`soft_dist.train.run.Trainer`; this module only tells it its rank, world size
and device, wraps the student in DDP and hands each epoch's report and rank 0's checkpoint folder to
``ray.train.report``. Ray Train's storage is the run directory itself (RunConfig name ``checkpoints``),
so its checkpoints are the run loop's ``RUN/checkpoints/epoch_NNNN`` folders; see run.py for the layout.
The run directory may be a local path (shared by all nodes for multi-node runs) or s3://bucket/prefix.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import Callable

import torch

from soft_dist.config import (Config, ConfigError, check_resume_changes, config_from_yaml, from_dict,
                              resolve_for_classes, to_dict, with_absolute_paths)
from soft_dist.method.sls import tau_above_uniform_note
from soft_dist.noise.setup import make_noise_table
from soft_dist.noise.table import NoiseTable
from soft_dist.run_files import CONFIG_FILE, RESULTS_FILE
from soft_dist.run_inputs import missing_run_input, read_noise_table, write_run_inputs
from soft_dist.storage import RunStore
from soft_dist.train import checkpoints as ckpt
from soft_dist.train.run import Placement, Trainer
from soft_dist.train.runlog import epoch_summary_line, read_metrics
from soft_dist.train.selection import DatasetInfo

# Worker environment: no print patching (it echoes every line twice), unbuffered output.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "PYTHONUNBUFFERED": "1"}


# ============================================================================ worker side


def _ddp_wrapper(device: torch.device, compile_model: bool):
    """Returns wrap(module) for SoftLearner: DDP when distributed, then torch.compile if asked."""
    from torch.nn.parallel import DistributedDataParallel

    from soft_dist.train.collectives import is_distributed

    def wrap(module):
        if is_distributed():
            ids = [device.index] if device.type == "cuda" else None
            # Only parameters that require grad are registered: the head is frozen in stage 1 and
            # the learner re-wraps when it is switched on (no find_unused_parameters needed).
            # broadcast_buffers (the default) starts every forward from rank 0's BN statistics.
            module = DistributedDataParallel(module, device_ids=ids)
        return torch.compile(module) if compile_model else module

    return wrap


def _ray_report(metrics: dict, folder: Path | None, epoch: int) -> None:
    """The run loop's report: Ray Train uploads rank 0's folder to RUN/checkpoints/epoch_NNNN."""
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None else None
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=ckpt.epoch_dir_name(epoch))


def _state_outside_run(store: RunStore) -> dict | None:
    """Ray's latest registered checkpoint when it lies outside the run directory (the run loop scans the
    run's own checkpoints/ folder, which is where Ray writes them here, so this is normally None).

    Ray names a checkpoint by its path inside the storage filesystem it was given (build_trainer), e.g.
    "bucket/prefix/checkpoints/epoch_0001" for s3://bucket/prefix: compared with that same storage path."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None or _in_run(checkpoint.path, store):
        return None
    try:
        with checkpoint.as_directory() as folder:
            return ckpt.read_state_folder(Path(folder))
    except (ckpt.CheckpointError, OSError):
        return None


def _in_run(checkpoint_path: str, store: RunStore) -> bool:
    """True when Ray's ``checkpoint_path`` lies in the run's checkpoints/ folder."""
    ours = f"{store.ray_storage()[0].rstrip('/')}/{ckpt.CHECKPOINTS_DIR}/"
    return f"{checkpoint_path.rstrip('/')}/".startswith(ours)


def worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker: the run loop with this worker's place in the run."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(config["config"])
    store = RunStore(config["run_dir"])
    table = NoiseTable(**config["noise_table"])
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
    train_rank(cfg, store, table, ctx.get_world_rank(), ctx.get_world_size(), device, report=_ray_report,
               restored=_state_outside_run(store))


def train_rank(cfg: Config, store: RunStore, table: NoiseTable, rank: int, world: int, device: torch.device,
               report: ckpt.ReportFn | None = None, restored: dict | None = None) -> dict:
    """One rank's part of a run: its share of the shards, DDP around the student, the run loop. Needs no
    Ray: the launcher has set up the torch.distributed group (when ``world`` > 1) and written the run's
    inputs (config.yaml, noise_table.csv). ``report`` and ``restored`` are the launcher's (see Trainer).
    Returns the results record."""
    from soft_dist.data.format import load_manifest
    from soft_dist.data.run_loaders import shard_loaders

    torch.set_num_threads(cfg.train.torch_threads or cfg.train.cpus_per_worker)
    loaders = shard_loaders(cfg, rank, world, device.type)
    try:
        data = DatasetInfo.from_manifest(load_manifest(loaders.shards_dir))
        placement = Placement(rank, world, device, _ddp_wrapper(device, cfg.train.compile))
        return Trainer(cfg, store, table, data, loaders, placement, report=report,
                       restored=restored).fit()
    finally:
        loaders.close()


# ============================================================================ driver side


def build_trainer(cfg: Config, run_dir: str | Path, table: NoiseTable, callbacks: list | None = None):
    """The TorchTrainer for one run (also built per trial by the sweep, with Tune's report callback).

    A run whose RUN/checkpoints holds a complete state continues from it: that is how ``--resume``, a
    restarted worker group and a restarted sweep trial all pick up where they were."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = cfg.train
    store = RunStore(run_dir)
    storage_path, storage_filesystem = store.ray_storage()
    return TorchTrainer(
        worker_loop,
        train_loop_config={
            "config": to_dict(cfg),
            "run_dir": store.location,
            "noise_table": {"idx": table.idx, "clean": table.clean, "noisy": table.noisy,
                            "kind": table.kind, "rate": table.rate, "seed": table.seed},
        },
        scaling_config=ScalingConfig(
            # (min, max) makes the run elastic: Ray Train restarts it with as many workers as fit.
            num_workers=(t.min_workers, t.workers) if t.min_workers else t.workers,
            elastic_resize_monitor_interval_s=t.elastic_resize_interval_s,
            use_gpu=t.use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=ckpt.CHECKPOINTS_DIR,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=t.max_failures),
            # The run loop keeps only the newest complete checkpoint itself (Ray would keep the newest
            # REGISTERED one, which after a worker death can be older than one already on storage).
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            worker_runtime_env={"env_vars": WORKER_ENV},
            callbacks=list(callbacks or []),
        ),
    )


class EpochPrinter:
    """Prints one line per finished epoch while Ray trains, read from RUN/metrics.jsonl (local or in
    object storage); on a terminal also a bar of epochs. Workers print nothing on a clean run."""

    def __init__(self, store: RunStore, epochs: int, echo: Callable[[str], None] | None, interval_s: float = 1.0):
        self.store, self.epochs, self.echo, self.interval_s = store, epochs, echo, interval_s
        self.last = max((r["epoch"] for r in read_metrics(store)), default=0)  # epochs already printed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soft-dist-epochs", daemon=True)
        self._bar = None

    def __enter__(self) -> "EpochPrinter":
        if self.echo is None:
            return self
        import sys

        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.epochs, initial=self.last, desc="training", unit="epoch", leave=False)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.echo is None:
            return
        self._stop.set()
        self._thread.join()
        self._print_new()
        if self._bar is not None:
            self._bar.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._print_new()

    def _print_new(self) -> None:
        try:
            records = read_metrics(self.store)
        except (OSError, ValueError):  # a remote read failed or raced an upload: try again next time
            return
        for record in records:
            if record["epoch"] > self.last:
                self.last = record["epoch"]
                line = epoch_summary_line(record["epoch"], self.epochs, record["train"], record["val"],
                                          workers=record.get("world_size"),
                                          val_labels=record.get("val_labels", "noisy"))
                lines = [line, record["note"]] if record.get("note") else [line]
                resumed = record["train"].get("resumed_at_step", 0)
                if resumed:  # a worker group restarted mid-epoch and went on from a step checkpoint
                    lines.append(f"  epoch {record['epoch']} went on from its step checkpoint after step {resumed} "
                                 f"of {record['train']['steps']} (a worker group was restarted)")
                for text in lines:
                    if self._bar is not None:
                        self._bar.write(text)
                    else:
                        self.echo(text)
                if self._bar is not None:
                    self._bar.update(1)


@contextlib.contextmanager
def sigint_handler_restored():
    """Put back the SIGINT handler TorchTrainer.fit() installs in the main thread. Its closure holds the
    handle of the run's TrainController actor, so as long as it stays installed that controller lives on
    (found by a test: one per finished run of an experiment grid, for as long as the process lived)."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)


def _print(line: str) -> None:
    print(line, flush=True)


def run_training(cfg: Config, run_dir: str | Path, resume: bool = False,
                 echo: Callable[[str], None] | None = _print) -> dict:
    """Train ``cfg`` with Ray Train into ``run_dir`` (a path or s3://...); returns results.json's record.

    ``echo`` gets one line per epoch (None: silent). ``resume=True`` is :func:`resume_training`'s path: it has
    checked that ``run_dir`` holds the run's inputs (config.yaml, noise_table.csv)."""
    from soft_dist.ray_cluster import check_cluster_fits, init_ray

    cfg = with_absolute_paths(cfg)  # the workers run in folders of their own; config.yaml says where
    store = RunStore(run_dir)
    if resume:
        if store.exists(RESULTS_FILE) and not store.exists(ckpt.CHECKPOINTS_DIR):
            raise ConfigError("--resume", f"{store.location} finished and kept no resumable state (train.keep_state)")
        table = read_noise_table(store)
    else:
        if store.exists(CONFIG_FILE):
            raise ConfigError("--run-dir", f"{store.location} already holds a run; "
                              f"use `soft-dist train --resume {store.location}`")
        table, num_classes = make_noise_table(cfg)  # reads the shards: a wrong folder fails before Ray starts
    init_ray()
    check_cluster_fits(cfg.train)  # before anything is written: a refused run leaves no run directory
    if resume:
        write_run_inputs(store, cfg, table)  # config.yaml says what runs now (e.g. more epochs)
    else:
        cfg = resolve_for_classes(cfg, num_classes)  # config.yaml holds the tau that runs
        note = tau_above_uniform_note(cfg.method.tau, num_classes, cfg.method.tau_relative)
        if echo and note and cfg.preset.target == "sls":
            echo(f"note: {note}")
        if echo and table.info.get("format"):
            from soft_dist.noise.lists import describe

            echo(f"{cfg.noise.file}: {describe(table)}")
        write_run_inputs(store, cfg, table)

    trainer = build_trainer(cfg, store.location, table)
    with EpochPrinter(store, cfg.train.epochs, echo), sigint_handler_restored():
        result = trainer.fit()
    if result.error is not None:
        raise result.error
    if not store.exists(RESULTS_FILE):
        raise RuntimeError(f"training ended without {store.path(RESULTS_FILE)}")
    if not cfg.train.keep_state:
        ckpt.drop_resumable_state(store)
    return json.loads(store.read_text(RESULTS_FILE))


def resume_training(run_dir: str | Path, overrides: list[str] | None = None,
                    echo: Callable[[str], None] | None = _print) -> dict:
    """`soft-dist train --resume RUN_DIR`: the saved config (plus overrides, e.g. more epochs), the saved
    noise table, from the newest complete checkpoint."""
    store = RunStore(run_dir)
    missing = missing_run_input(store)
    if missing:
        raise ConfigError("--resume", f"{store.location} is not a run directory (no {missing})")
    text = store.read_text(CONFIG_FILE)  # once: in object storage each read is a request
    saved = config_from_yaml(text, store.path(CONFIG_FILE))
    cfg = config_from_yaml(text, store.path(CONFIG_FILE), overrides)
    check_resume_changes(saved, cfg, "command line")
    return run_training(cfg, store.location, resume=True, echo=echo)
