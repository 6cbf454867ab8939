"""Two real torch.distributed ranks (gloo, two processes) for the tests of what ranks compute together."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch.distributed as dist
import torch.multiprocessing as torch_mp


def on_two_ranks(fn: Callable, meeting_folder: Path, *args) -> None:
    """``fn(rank, *args)`` in 2 new processes, each already in the gloo group of the two (left when ``fn``
    returns); raises when either process fails (spawn stops the other).

    The ranks meet through a file in ``meeting_folder``, not a TCP port: a port found free before the ranks
    start (they take seconds to import torch) can be taken meanwhile by a socket of another test process,
    and a rank then talks to a stranger. Seen once, beside the field walk's ranks: rank 1 of the epoch
    evaluation test aborted in C++ ("terminate called without an active exception")."""
    store = Path(meeting_folder) / "rank-meeting"
    if store.exists():
        raise FileExistsError(f"{store}: a group met here already (the file must be new)")
    torch_mp.spawn(_in_group, args=(str(store), fn, args), nprocs=2)


def _in_group(rank: int, store: str, fn: Callable, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()
