"""Two real torch.distributed ranks (gloo, two processes) for the tests of what ranks compute together."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp

from soft_dist.config import Config, config_from_yaml, resolve_for_classes, with_absolute_paths
from soft_dist.noise.setup import make_noise_table
from soft_dist.noise.table import NoiseTable
from soft_dist.storage import RunStore
from soft_dist.train.ray_trainer import train_rank
from soft_dist.run_inputs import write_run_inputs


def on_two_ranks(fn: Callable, meeting_folder: Path, *args) -> None:
    """``fn(rank, *args)`` in 2 new processes, each already in the gloo group of the two (left when ``fn``
    returns); raises when either process fails (spawn stops the other).

    Why a barrier and a file. On 2026-12-07 rank 1 of the epoch evaluation test aborted in C++ ("terminate
    called without an active exception", SIGABRT) in 2 of 4 runs of `make test-quick` (the day's first
    commit once, once with the field walk's ranks beside), each time after both ranks had written their
    results: while the group was torn down. Alone it did not happen (0 of 10 under full CPU load, nor with
    one rank tearing down 0.5-2 s after the other). So both ranks now meet at a barrier once ``fn`` has
    returned, before either tears anything down, and the group meets through a file in ``meeting_folder``
    rather than rank 0's TCP store: no store server in rank 0 that rank 1 can lose at exit, and no port
    found free seconds before rank 0 binds it (any socket on the machine may take it meanwhile)."""
    store = Path(meeting_folder) / "rank-meeting"
    if store.exists():
        raise FileExistsError(f"{store}: a group met here already (the file must be new)")
    torch_mp.spawn(_in_group, args=(str(store), fn, args), nprocs=2)


def _in_group(rank: int, store: str, fn: Callable, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        fn(rank, *args)
        dist.barrier()  # neither rank tears the group down while the other may still use it
    finally:
        dist.destroy_process_group()


def prepare_run(cfg: Config, run_dir: Path) -> None:
    """The driver's part of a new run, as run_training does it before Ray starts: the noise table, tau
    resolved for the shards' classes, config.yaml and noise_table.csv written into ``run_dir``."""
    cfg = with_absolute_paths(cfg)
    table, num_classes = make_noise_table(cfg)
    write_run_inputs(RunStore(run_dir), resolve_for_classes(cfg, num_classes), table)


def train_runs_on_two_ranks(run_dirs: list[Path], meeting_folder: Path) -> None:
    """Every prepared run (prepare_run) in turn on the same 2 ranks, each rank running train_rank, the
    code of a Ray Train worker: a run's results.json is written by rank 0 as in a Ray run. The runs share
    the start-up of the two processes (torch, DALI), which is most of a tiny run's time."""
    on_two_ranks(_train_each_run, meeting_folder, [str(d) for d in run_dirs])


def _train_each_run(rank: int, run_dirs: list[str]) -> None:
    for run_dir in run_dirs:
        store = RunStore(run_dir)
        cfg = config_from_yaml(store.read_text("config.yaml"), store.path("config.yaml"))
        table = NoiseTable.from_csv(store.read_text("noise_table.csv"), store.path("noise_table.csv"))
        try:
            train_rank(cfg, store, table, rank, 2, torch.device("cpu"))
        except Exception as err:  # spawn stops the other rank; this names the run
            raise RuntimeError(f"rank {rank} failed in {run_dir}: {err}") from err
