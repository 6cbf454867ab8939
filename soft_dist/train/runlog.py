"""What rank 0 records of a run as it goes, in a local folder or in object storage: metrics.jsonl,
TensorBoard events, one console line per epoch and, after the last epoch, results.json.

metrics.jsonl is rewritten whole (atomically) every epoch rather than appended to: object storage has
no append, and a resumed run first drops the lines of epochs it is about to train again, so the file
never holds an epoch twice or skips one. The other ranks hold a :class:`SilentLog`, which records nothing."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from soft_dist.progress import counted
from soft_dist.run_files import METRICS_FILE, RESULTS_FILE
from soft_dist.storage import RunStore

TENSORBOARD_DIR = "tensorboard"


def read_metrics(store: RunStore) -> list[dict]:
    """Every line of RUN/metrics.jsonl ([] when there is none yet)."""
    if not store.exists(METRICS_FILE):
        return []
    return [json.loads(line) for line in store.read_text(METRICS_FILE).splitlines() if line.strip()]


def read_results(store: RunStore) -> dict:
    """RUN/results.json ({} when there is none)."""
    return json.loads(store.read_text(RESULTS_FILE)) if store.exists(RESULTS_FILE) else {}


class SilentLog:
    """The log of a rank other than 0: it trains and evaluates like rank 0, but records and prints nothing."""

    def say(self, text: str) -> None:
        """A line for the console."""

    def start(self, epochs_done: int) -> None:
        """Open the log for a run that has ``epochs_done`` epochs behind it."""

    def record(self, epoch: int, record: dict) -> None:
        """One finished epoch: its metrics line (``record`` holds at least ``train`` and ``val``)."""

    def finish(self, results: dict) -> None:
        """The last epoch's results record."""

    def close(self) -> None:
        pass


class RunLog(SilentLog):
    """Rank 0's log of a run of ``epochs`` epochs; ``echo`` (None: silent) gets the console lines."""

    def __init__(self, store: RunStore, epochs: int, echo: Callable[[str], None] | None = None,
                 tensorboard: bool = True):
        self.store, self.epochs, self.echo, self.tensorboard = store, epochs, echo, tensorboard
        self.lines: list[str] = []
        self.writer = None
        self._scratch = None

    def say(self, text: str) -> None:
        if self.echo is not None:
            self.echo(text)

    def start(self, epochs_done: int) -> None:
        """Keep only the metrics lines of the ``epochs_done`` epochs and open the TensorBoard writer."""
        self.lines = [json.dumps(r) for r in read_metrics(self.store) if r["epoch"] <= epochs_done]
        self.store.write_text(METRICS_FILE, "".join(f"{line}\n" for line in self.lines))
        if not self.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: jsonl only
            return
        if self.store.is_local:
            folder = self.store.path(TENSORBOARD_DIR)
        else:  # events are written locally and uploaded after every epoch
            self._scratch = tempfile.TemporaryDirectory(prefix="soft-dist-tb-")
            folder = self._scratch.name
        # purge_step: TensorBoard hides events of a previous attempt from the first epoch trained again.
        self.writer = SummaryWriter(folder, purge_step=epochs_done + 1 if epochs_done else None)

    def record(self, epoch: int, record: dict) -> None:
        self.lines.append(json.dumps({"epoch": epoch, **record}))
        self.store.write_text(METRICS_FILE, "".join(f"{line}\n" for line in self.lines))
        if self.writer is not None:
            for key, value in _flatten(record).items():
                self.writer.add_scalar(key, value, epoch)
            self.writer.flush()
            if self._scratch is not None:
                for path in Path(self._scratch.name).iterdir():
                    self.store.upload_file(path, f"{TENSORBOARD_DIR}/{path.name}")
        self.say(epoch_summary_line(epoch, self.epochs, record["train"], record["val"],
                                    val_labels=record.get("val_labels", "noisy")))
        if record.get("note"):
            self.say(record["note"])

    def finish(self, results: dict) -> None:
        self.store.write_text(RESULTS_FILE, json.dumps(results, indent=2))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._scratch is not None:
            self._scratch.cleanup()


def epoch_summary_line(epoch: int, epochs: int, train: dict, val: dict, workers: int | None = None,
                       val_labels: str = "noisy") -> str:
    """One console line per epoch. The loss shows its parts where there is a consistency term, because the
    total rises while its weight ramps up (lambda x cons grows from 0) without anything diverging; "val"
    says which labels it is scored against (noisy: the realistic setting, so it sits below test accuracy)."""
    loss = f"loss {train.get('loss', float('nan')):.3f}"
    if "loss_cons" in train and "lambda" in train:
        loss += f" = ce {train['loss_ce']:.3f} + {train['lambda']:.2f} x cons {train['loss_cons']:.3f}"
    parts = [f"epoch {epoch}/{epochs}", loss]
    if "share_k_gt_1" in train:
        parts.append(f"k>1 {train['share_k_gt_1']:.2f}")
    if "teacher_agrees" in train:
        parts.append(f"teacher=label {train['teacher_agrees']:.2f}")
    parts.append(f"val on {val_labels} labels: " + ", ".join(f"{b} {r['accuracy']:.3f}" for b, r in val.items()))
    parts.append(f"{train['images_per_s']:.0f} img/s" + (f" x {counted(workers, 'worker')}" if workers else ""))
    return " | ".join(parts)


def _flatten(node: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out
