"""``train.trace_samples``: the samples each training step trained, per rank and per process, as it happens.

``RUN/sample_trace/rank{R}-pid{P}-{N}.jsonl``: a first line ``{"rank", "pid", "attempt", "resumed_from":
[epochs done, steps of the next epoch]}`` (``attempt``: a token shared by the ranks of one start of the
worker group), then one line per step ``{"epoch", "step", "idx"}`` (epoch from 1, step
of that epoch from 1, the idx of the step's valid rows in batch order). Each line is flushed when written,
so a process killed with SIGKILL leaves every step it finished; a restarted worker writes a new file. The
steps a killed process trained after the checkpoint its successor resumed from were lost with it: a
reader (:func:`trained_steps`) keeps an attempt's lines only up to the next attempt's ``resumed_from``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from soft_dist.config import ConfigError
from soft_dist.storage import RunStore

TRACE_DIR = "sample_trace"


class SampleTrace:
    """Appends this process's steps to its own trace file in the run directory (local runs only)."""

    def __init__(self, store: RunStore, rank: int, resumed_from: tuple[int, int], attempt: str):
        if not store.is_local:
            raise ConfigError("train.trace_samples", f"writes files as it trains; {store.location} is not a "
                                                     "local run directory")
        folder = Path(store.path(TRACE_DIR))
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"rank{rank}-pid{os.getpid()}-{time.time_ns()}.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self._write({"rank": rank, "pid": os.getpid(), "attempt": attempt, "resumed_from": list(resumed_from)})

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def step(self, epoch: int, step: int, batch) -> None:
        """Epoch ``epoch`` (from 1), its step ``step`` (from 1) trained ``batch``'s valid rows."""
        idx = batch.idx[batch.valid] if getattr(batch, "valid", None) is not None else batch.idx
        self._write({"epoch": epoch, "step": step, "idx": [int(i) for i in idx.tolist()]})

    def close(self) -> None:
        self._file.close()


def read_trace(folder: str | Path) -> list[dict]:
    """Every trace file in ``folder``: [{"rank", "pid", "resumed_from", "steps": [{"epoch", "step",
    "idx"}, ...]}] in the order the files were started."""
    files = []
    for path in Path(folder).glob("rank*-pid*-*.jsonl"):
        # Read while a run writes: only whole lines count (a line is whole once its newline is written), and a
        # file whose first line is not there yet (its worker is creating it) is left out until it is.
        whole = path.read_text(encoding="utf-8").split("\n")[:-1]
        lines = [json.loads(line) for line in whole if line.strip()]
        if lines:
            files.append({**lines[0], "started_ns": int(path.stem.rsplit("-", 1)[1]), "steps": lines[1:]})
    return sorted(files, key=lambda f: f["started_ns"])


def trained_steps(files: list[dict]) -> dict[tuple[int, int, int], list[int]]:
    """(epoch, step, rank) -> idx of the steps whose training survived into the finished run. The files of
    one start of the worker group share an ``attempt``; an attempt's steps count up to the position the
    next attempt resumed from (what lay after it was lost with the killed processes and trained again)."""
    attempts: dict[str, list[dict]] = {}
    for f in files:  # in start order, so attempts are too
        attempts.setdefault(f["attempt"], []).append(f)
    groups = list(attempts.values())
    kept: dict[tuple[int, int, int], list[int]] = {}
    for a, group in enumerate(groups):
        limit = tuple(groups[a + 1][0]["resumed_from"]) if a + 1 < len(groups) else None
        for f in group:
            for record in f["steps"]:
                # after epoch e's step s the run stands at (e - 1 epochs done, s steps): compared in those terms
                if limit is None or (record["epoch"] - 1, record["step"]) <= limit:
                    kept[(record["epoch"], record["step"], f["rank"])] = record["idx"]
    return kept
