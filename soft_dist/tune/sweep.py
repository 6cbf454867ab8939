"""Ray Tune + Optuna sweep around Ray Train: one driver function per trial builds the trial's TorchTrainer.

The sweep directory's layout is in soft_dist.tune.layout.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from soft_dist.config import ConfigError, resolve_for_classes, save_config, to_dict, with_absolute_paths
from soft_dist.noise.table import NoiseTable
from soft_dist.run_files import CONFIG_FILE
from soft_dist.tune.layout import (ASHA_STATE_FILE, BASE_FILE, LAST_REPORT_FILE, STARTS_FILE, SWEEP_FILE, TABLE_FILE,
                                   TRIALS_DIR, TUNE_RUN_NAME)
from soft_dist.tune.search import optuna_search
from soft_dist.tune.sweep_config import EPOCHS_KEY, Sweep, apply_params, load_sweep

# The trial driver only waits on its TorchTrainer, so it reserves no CPU: trials are limited by the
# trainers' workers (and max_concurrent), and two 1-worker trials fit on two cores. Tune refuses an
# empty resource request, hence a token 1 MiB of memory.
DRIVER_RESOURCES = {"cpu": 0, "memory": 1024**2}

# ============================================================================ inside a trial


# Trial id -> {"mailbox": the Ray queue through which that trial's Train controller announces itself and
# its workers' placement group, "stopping": set when Tune stops the trial}. Lives in the trial actor.
_LIVE: dict[str, dict] = {}


def _report_callback(trial_dir: Path):
    """Ray Train callback (runs in the Train controller): forwards rank 0's per-epoch report to Tune with
    ``epochs_done`` added (the run loop writes results.json itself before the last report)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            first = dict(metrics[0])
            if "epoch" in first:
                first[EPOCHS_KEY] = int(first["epoch"])
            # Written before Tune hears of it: if the sweep is interrupted between the two, the restarted
            # trial re-reports the last epoch from this file instead of losing it (see run_trial).
            flat = {k: v for k, v in first.items() if isinstance(v, (int, float, str, bool))}
            (trial_dir / LAST_REPORT_FILE).write_text(json.dumps(flat))
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return EpochReport()


def _worker_group_callback(mailbox):
    """Ray Train controller callback that sends the trial actor the controller's handle and the workers'
    placement group each time a worker group starts. Ray Train passes callbacks that are not
    UserCallbacks to the controller as they are; WorkerGroupCallback is its internal hook interface (the
    one its own PlacementGroupCleaner uses), pinned with ray==2.60."""
    import ray
    from ray.train.v2._internal.execution.callback import WorkerGroupCallback

    class AnnounceWorkers(WorkerGroupCallback):
        def after_worker_group_start(self, worker_group):
            pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
            mailbox.put((ray.get_runtime_context().current_actor, pg))

    return AnnounceWorkers()


def _stop_trainer(trial_id: str) -> None:
    """Called in the trial actor when Tune stops the trial (ASHA, or the last epoch): kill its Train
    controller and remove its workers' placement group. Without this the controller dies with the trial
    actor, but the placement group it created lives on (placement groups belong to the job, not to the
    actor that made them) and keeps the workers' CPUs/GPUs until the sweep ends: later trials would wait
    for them forever. Ray Train's own cleaner would catch it only with the dashboard's state API, and
    asking the busy controller to abort() did not take effect before Tune ended the trial actor."""
    import queue

    import ray
    from ray.util.placement_group import remove_placement_group

    live = _LIVE.get(trial_id)
    if live is None:
        return
    live["stopping"] = True
    announced = []
    while True:
        try:
            announced.append(live["mailbox"].get_nowait())
        except queue.Empty:
            break
    if not announced:
        return
    print(f"[soft-dist] trial {trial_id} stopped by Tune: ending its TorchTrainer", flush=True)
    ray.kill(announced[-1][0], no_restart=True)  # first the controller, so it starts no new worker group
    for _, pg in announced:
        try:
            remove_placement_group(pg)  # ends the workers and frees their resources at once
        except Exception:  # already removed (the trainer had finished); nothing is held
            pass


def _trainable_class(fn):
    """Tune's function trainable for ``fn`` with a cleanup that stops the trial's TorchTrainer."""
    from ray.tune.trainable.function_trainable import wrap_function

    class SoftTrial(wrap_function(fn)):
        def cleanup(self):
            _stop_trainer(self.trial_id)
            super().cleanup()

    return SoftTrial


def run_trial(params: dict[str, Any], *, sweep_dir: str, base: dict, keys: dict[str, str], table: dict,
              num_classes: int) -> None:
    """The driver function of one trial: ``params`` maps short names (``tau``) to values, ``keys`` maps
    them to dotted config keys. Runs in a Tune actor that reserves no CPU; the TorchTrainer's workers
    hold the trial's CPUs/GPUs."""
    import ray.tune
    from ray.util.queue import Queue

    from soft_dist.config import from_dict
    from soft_dist.train.ray_trainer import build_trainer

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = apply_params(from_dict(base), {keys[name]: value for name, value in params.items()})
    cfg = resolve_for_classes(cfg, num_classes)  # the trial's config.yaml holds the tau that runs
    trial_dir = Path(sweep_dir) / TRIALS_DIR / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, trial_dir / CONFIG_FILE)
    with open(trial_dir / STARTS_FILE, "a") as f:  # counts (re)starts: resume must not rerun finished trials
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {json.dumps(params, sort_keys=True)}\n")
    finished = _finished_report(trial_dir, cfg.train.epochs)
    if finished is not None:
        # Its training ended (final checkpoint written) but the sweep stopped before Tune got the last
        # report; training again would run no epoch and report nothing, so hand Tune that report.
        ray.tune.report(finished)
        return
    live = _LIVE[trial_id] = {"mailbox": Queue(actor_options={"num_cpus": 0}), "stopping": False}
    # A trial restarted after an interruption continues from the newest complete checkpoint in
    # trial_dir/checkpoints.
    trainer = build_trainer(cfg, trial_dir, NoiseTable(**table),
                            callbacks=[_report_callback(trial_dir), _worker_group_callback(live["mailbox"])])
    try:
        trainer.fit()
    except Exception:
        if not live["stopping"]:
            raise  # a real training failure; an aborted trainer after a stop is expected
    finally:
        _LIVE.pop(trial_id, None)


def _finished_report(trial_dir: Path, epochs: int) -> dict | None:
    """The trial's last forwarded report if it covers every epoch, else None."""
    path = trial_dir / LAST_REPORT_FILE
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report if report.get(EPOCHS_KEY, 0) >= epochs else None


def trial_dirname(trial) -> str:
    """Tune's trial folder under DIR/tune: the trial id (no timestamps, so the layout is predictable)."""
    return trial.trial_id


# ============================================================================ the sweep driver


def _scheduler(sweep: Sweep, run_dir: Path):
    if sweep.scheduler.type == "none":
        return None
    from soft_dist.tune.scheduler import ResumableASHA

    return ResumableASHA(run_dir / ASHA_STATE_FILE, time_attr=EPOCHS_KEY, max_t=sweep.epochs,
                         grace_period=sweep.scheduler.grace_period,
                         reduction_factor=sweep.scheduler.reduction_factor)


def _trainable(sweep: Sweep, run_dir: Path, table: NoiseTable, num_classes: int):
    from ray import tune

    fn = tune.with_parameters(
        run_trial, sweep_dir=str(run_dir), base=to_dict(sweep.base), keys={d.name: d.key for d in sweep.space},
        table={"idx": table.idx, "clean": table.clean, "noisy": table.noisy, "kind": table.kind,
               "rate": table.rate, "seed": table.seed},
        num_classes=num_classes,
    )
    return tune.with_resources(_trainable_class(fn), DRIVER_RESOURCES)


def _tuner(sweep: Sweep, run_dir: Path, table: NoiseTable, num_classes: int):
    from ray import tune

    from soft_dist.tune.console import TrialLines

    return tune.Tuner(
        _trainable(sweep, run_dir, table, num_classes),
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
            max_concurrent_trials=sweep.max_concurrent, search_alg=optuna_search(sweep, run_dir),
            scheduler=_scheduler(sweep, run_dir), trial_dirname_creator=trial_dirname, reuse_actors=False,
        ),
        # Training has its own worker fault tolerance (train.max_failures); a trial error is final.
        # verbose=0: Tune's status tables and result boxes give way to one line per trial event.
        run_config=tune.RunConfig(name=TUNE_RUN_NAME, storage_path=str(run_dir), verbose=0,
                                  callbacks=[TrialLines(sweep)]),
    )


def _fit(tuner) -> None:
    """tuner.fit() with Tune's legacy output engine: at verbose=0 it prints nothing, while the new engine
    still prints its experiment box and result paths (our TrialLines callback prints the trials)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner.fit()


def prepare_sweep(sweep: Sweep, run_dir: Path) -> tuple[Sweep, NoiseTable, int]:
    """Write sweep.yaml, base_config.yaml and the ONE noise table every trial uses."""
    import yaml

    from soft_dist.noise.setup import make_noise_table

    if (run_dir / TUNE_RUN_NAME).exists() or (run_dir / SWEEP_FILE).exists():
        raise ConfigError("--run-dir", f"{run_dir} already holds a sweep; use `soft-dist tune --resume {run_dir}`")
    sweep.base = with_absolute_paths(sweep.base)  # trials run in folders of their own
    table, num_classes = make_noise_table(sweep.base)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(sweep.base, run_dir / BASE_FILE)
    (run_dir / SWEEP_FILE).write_text(yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    table.save(run_dir / TABLE_FILE)
    return sweep, table, num_classes


def run_sweep(sweep: Sweep, run_dir: str | Path) -> dict:
    """Start a new sweep in ``run_dir``; returns the summary of :func:`finish`."""
    from soft_dist.ray_cluster import check_cluster_fits, init_ray

    run_dir = Path(run_dir).resolve()
    init_ray()
    check_cluster_fits(sweep.base.train)  # one trial's workers must fit (before the sweep folder is written)
    sweep, table, num_classes = prepare_sweep(sweep, run_dir)
    start = time.perf_counter()
    _fit(_tuner(sweep, run_dir, table, num_classes))
    return finish(sweep, run_dir, time.perf_counter() - start)


def resume_sweep(run_dir: str | Path) -> dict:
    """`soft-dist tune --resume DIR`: finished trials are kept; unfinished and errored ones run again
    (each continues from its own latest training checkpoint); then the remaining trials are sampled."""
    from ray import tune

    from soft_dist.data.format import load_manifest
    from soft_dist.data.stage import local_shards
    from soft_dist.ray_cluster import init_ray

    run_dir = Path(run_dir).resolve()
    tune_dir = run_dir / TUNE_RUN_NAME
    if not (run_dir / SWEEP_FILE).is_file() or not tune.Tuner.can_restore(tune_dir):
        raise ConfigError("--resume", f"{run_dir} holds no resumable sweep (no {SWEEP_FILE} or {TUNE_RUN_NAME}/ state)")
    sweep = load_sweep(run_dir / SWEEP_FILE)
    table = NoiseTable.load(run_dir / TABLE_FILE)
    num_classes = load_manifest(local_shards(sweep.base.data.shards, sweep.base.data.cache_dir, sweep.base.data.cache_max_gb)).num_classes
    init_ray()
    start = time.perf_counter()
    tuner = tune.Tuner.restore(str(tune_dir), trainable=_trainable(sweep, run_dir, table, num_classes),
                               resume_unfinished=True, resume_errored=True)
    _fit(tuner)
    return finish(sweep, run_dir, time.perf_counter() - start)


def finish(sweep: Sweep, run_dir: Path, seconds: float) -> dict:
    """Write trials.csv; when every trial has ended, also best.yaml and the plots."""
    from soft_dist.tune.outputs import write_outputs

    summary = write_outputs(sweep, run_dir)
    summary["seconds"] = seconds
    return summary
