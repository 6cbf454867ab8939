"""A run's resumable state (its checkpoints): how it is written, found, read, resumed from and pruned.

The run loop holds a :class:`Checkpoints` (every rank: resume, report each epoch to the launcher) or, on
rank 0, a :class:`CheckpointWriter` (which also writes each epoch's state and drops the older ones).

``RUN/checkpoints/epoch_NNNN/`` holds ``state.pt`` (student, teacher, optimizer, step, epoch, RNG states,
config, noise-table digest, history) and ``meta.json`` (epoch, size and sha256 of state.pt). A checkpoint
counts as complete only when meta.json parses and state.pt has exactly that size and digest, so a folder
half-copied by a dying worker (or half-uploaded to object storage) is never resumed from. Only the newest
complete one is kept. (RUN/model.pt, the model chosen on validation, is soft_dist.train.model_file.)

With ``train.checkpoint_every_steps`` rank 0 also writes mid-epoch checkpoints,
``epoch_NNNN_step_SSSSSS/`` (NNNN epochs done, then SSSSSS steps of the next one), the same files plus the
epoch's progress (soft_dist.train.epoch.EpochProgress). They go straight into the run directory, not
through the launcher (Ray Tune reads each report as a finished epoch). The newest epoch checkpoint stays
beside the newest step checkpoint until the epoch ends; a resume takes the newest complete one of all.

state.pt holds only tensors, numbers, strings, lists and dicts: it loads with
``torch.load(..., weights_only=True)`` (RNG states are stored as tensors and lists, not pickled objects).
No Ray and no DALI here: Ray Train uploads the same folders through ``ray.train.report``.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from soft_dist.config import Config, to_dict
from soft_dist.storage import RunStore
from soft_dist.train.collectives import all_gather_objects, broadcast_object_from_rank0
from soft_dist.train.errors import CheckpointError

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
# /2: "epoch" is the count of epochs done (numbered from 1, as everywhere); /1 counted from 0.
STATE_FORMAT = "soft-dist-state/2"
_CHECKPOINT_DIR = re.compile(r"^epoch_(\d{4,})(?:_step_(\d{6,}))?$")
PARTIAL_PREFIX = ".partial-"
DIGEST_KEY = "state_sha256"  # added to a state when it is read (not stored in state.pt)
# What a process killed while writing a checkpoint leaves in RUN/checkpoints: its scratch folder, or
# RunStore.put_folder's hidden staging / set-aside copies (.epoch_0003.<hex>.tmp|old).
_LEFTOVER = re.compile(rf"^({re.escape(PARTIAL_PREFIX)}|\.epoch_\d{{4,}}(_step_\d{{6,}})?\.)")

# report(metrics, checkpoint_folder, epoch): hand one epoch's flat metrics on and, on rank 0, make the
# local checkpoint folder durable as RUN/checkpoints/epoch_NNNN before returning (other ranks get None).
ReportFn = Callable[[dict, "Path | None", int], None]


def epoch_dir_name(epoch: int, step: int = 0) -> str:
    """``epoch_0003`` at the end of epoch 3, ``epoch_0003_step_000050`` after 50 steps of epoch 4: folders
    sort by name in the order they were written."""
    return f"epoch_{epoch:04d}" + (f"_step_{step:06d}" if step else "")


# ----------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    """This process's torch, CUDA, numpy and Python RNG states as tensors and lists (weights_only-safe)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """The same seed for torch, numpy and Python on every rank (identical initial weights)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


# ------------------------------------------------------------------------------- resumable state


def write_state_folder(state: dict, folder: Path) -> Path:
    """Write ``state`` as folder/state.pt plus folder/meta.json (size and sha256 of state.pt)."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state}, buffer)
    data = buffer.getvalue()
    (folder / STATE_FILE).write_bytes(data)
    meta = {"format": STATE_FORMAT, "epoch": int(state["epoch"]), "step": int(state.get("step", 0)),
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / META_FILE).write_text(json.dumps(meta))
    return folder


def _parse_state(data: bytes, meta_text: str, where: str) -> dict:
    """state.pt bytes checked against meta.json; CheckpointError when incomplete or foreign."""
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{where}/{META_FILE}: incomplete or not JSON ({err})") from err
    if len(data) != meta.get("bytes") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"{where}/{STATE_FILE}: incomplete (size or sha256 differs from {META_FILE})")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT:
        older = " (written by an older soft-dist that counted epochs from 0; finish it with that version)" if (
            str(state.get("format", "")).startswith("soft-dist-state/")) else ""
        raise CheckpointError(f"{where}/{STATE_FILE}: not a soft-dist state of this version (format "
                              f"{state.get('format')!r}){older}")
    state[DIGEST_KEY] = meta["sha256"]  # which bytes these are: ranks agree on it before resuming
    return state


def read_state_folder(folder: Path) -> dict:
    """The state in a local checkpoint folder (e.g. one Ray Train handed back); CheckpointError if incomplete."""
    folder = Path(folder)
    try:
        data, meta = (folder / STATE_FILE).read_bytes(), (folder / META_FILE).read_text()
    except OSError as err:
        raise CheckpointError(f"{folder}: incomplete checkpoint ({err})") from err
    return _parse_state(data, meta, str(folder))


def checkpoint_positions(store: RunStore) -> list[tuple[int, int]]:
    """(epochs done, steps of the next epoch) of the checkpoint folders under RUN/checkpoints, newest
    first (complete or not); step 0 is an epoch's end."""
    names = store.listdir(CHECKPOINTS_DIR)
    found = ((int(m.group(1)), int(m.group(2) or 0)) for m in map(_CHECKPOINT_DIR.match, names) if m)
    return sorted(found, reverse=True)


def checkpoint_epochs(store: RunStore) -> list[int]:
    """Epochs of the end-of-epoch checkpoint folders under RUN/checkpoints, newest first (complete or not)."""
    return [epoch for epoch, step in checkpoint_positions(store) if step == 0]


def position_of(state: dict) -> tuple[int, int]:
    """(epochs done, steps of the next epoch) of a state: how far the run it resumes had come."""
    return int(state["epoch"]), int(state.get("step", 0))


def read_checkpoint(store: RunStore, epoch: int, step: int = 0) -> dict:
    """The state in RUN/checkpoints/epoch_NNNN[_step_SSSSSS]; CheckpointError when it is incomplete."""
    rel = f"{CHECKPOINTS_DIR}/{epoch_dir_name(epoch, step)}"
    try:
        data, meta = store.read_bytes(f"{rel}/{STATE_FILE}"), store.read_text(f"{rel}/{META_FILE}")
    except OSError as err:  # FileNotFoundError included
        raise CheckpointError(f"{store.path(rel)}: incomplete checkpoint ({err})") from err
    return _parse_state(data, meta, store.path(rel))


def latest_state(store: RunStore, skipped: Callable[[str], None] | None = None) -> dict | None:
    """The newest COMPLETE resumable state in the run, or None. Incomplete folders (a worker died while
    writing) are passed over; ``skipped`` is told about each one."""
    for epoch, step in checkpoint_positions(store):
        try:
            return read_checkpoint(store, epoch, step)
        except CheckpointError as err:
            if skipped is not None:
                skipped(str(err))
    return None


def save_checkpoint(store: RunStore, folder: Path, epoch: int, step: int = 0) -> None:
    """Put a written state folder into RUN/checkpoints/epoch_NNNN[_step_SSSSSS] (atomically on local disk)."""
    store.put_folder(folder, f"{CHECKPOINTS_DIR}/{epoch_dir_name(epoch, step)}")


def drop_resumable_state(store: RunStore) -> None:
    """After the last epoch, when train.keep_state is false: only model.pt and the logs remain. Called by
    the launcher once training has ended (Ray Train still writes its bookkeeping into the folder until then)."""
    store.delete(CHECKPOINTS_DIR)


def prune_checkpoints(store: RunStore, keep_epoch: int, keep_step: int = 0) -> None:
    """Delete every checkpoint folder but the one at (``keep_epoch``, ``keep_step``) (called by rank 0 once
    that one is complete) and, after a step checkpoint, the end of ``keep_epoch`` (the launcher registered
    it); also what killed writers left behind (only rank 0 writes checkpoints, one at a time)."""
    keep = {(keep_epoch, keep_step), (keep_epoch, 0)}
    for epoch, step in checkpoint_positions(store):
        if (epoch, step) not in keep:
            store.delete(f"{CHECKPOINTS_DIR}/{epoch_dir_name(epoch, step)}")
    for name in store.listdir(CHECKPOINTS_DIR):
        if _LEFTOVER.match(name):
            store.delete(f"{CHECKPOINTS_DIR}/{name}")


def scratch_folder(store: RunStore) -> tempfile.TemporaryDirectory:
    """A local folder to write a checkpoint in before it is put into the run (removed afterwards).

    For a local run it lies in RUN/checkpoints, so that what a process killed mid-write leaves (a 180 MB
    state.pt, seen after node-loss tests) is removed by the next prune; remote runs use the temp folder."""
    if not store.is_local:
        return tempfile.TemporaryDirectory(prefix="soft-dist-ckpt-")
    parent = Path(store.path(CHECKPOINTS_DIR))
    parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=PARTIAL_PREFIX, dir=parent)


# ------------------------------------------------------------------------------- the run's checkpoints


def put_into_run(store: RunStore) -> ReportFn:
    """The report of a run without a launcher: put rank 0's checkpoint folder into the run directory."""

    def report(metrics: dict, folder: Path | None, epoch: int) -> None:
        if folder is not None:
            save_checkpoint(store, folder, epoch)

    return report


class Checkpoints:
    """A rank's side of the run's checkpoints: the state to resume from, and each epoch reported to the
    launcher. Ranks other than 0 use this class as it is: they write no state (``report`` gets None)."""

    def __init__(self, store: RunStore, report: ReportFn, cfg: Config, table_digest: str,
                 restored: dict | None = None, say: Callable[[str], None] | None = None):
        self.store, self.report, self.cfg, self.table_digest = store, report, cfg, table_digest
        self.restored = restored  # a state handed over by the launcher (Ray Train's checkpoint)
        self.say = say

    # Rank 0 (CheckpointWriter) chooses the state to resume from; the others load exactly that one.
    chooses = False

    def newest_state(self) -> dict | None:
        """The state every rank resumes from, or None for a new run: the newest complete one rank 0 sees
        (the launcher's or the newest in the run directory: Ray may not have registered the last
        checkpoint a dying worker wrote). Rank 0 broadcasts its epoch and sha256 and every other rank
        loads those very bytes, so ranks never start from different epochs even when their views of the
        storage differ; a rank that cannot find them makes every rank raise the same CheckpointError."""
        choice, problem = None, None
        if self.chooses:
            try:
                state = self._own_newest_state()
                choice = None if state is None else (*position_of(state), state[DIGEST_KEY])
            except CheckpointError as err:
                problem = str(err)
        choice, chief_problem = broadcast_object_from_rank0((choice, problem))
        if chief_problem is not None:
            raise CheckpointError(chief_problem)
        if not self.chooses:
            state, problem = self._state_matching(choice)
        problems = [p for p in all_gather_objects(problem) if p is not None]
        if problems:
            raise CheckpointError(problems[0])
        return state

    def _own_newest_state(self) -> dict | None:
        """The newest complete state this process sees (rank 0's choice)."""
        on_disk = latest_state(self.store, skipped=self.say)
        candidates = [s for s in (self.restored, on_disk) if s is not None]
        if not candidates:
            return None
        state = max(candidates, key=position_of)
        if state["noise_table_sha256"] != self.table_digest:
            raise CheckpointError(f"{self.store.path(CHECKPOINTS_DIR)}: the checkpoint was made with "
                                  "a different noise table; refusing to resume")
        return state

    def _state_matching(self, choice: tuple[int, int, str] | None) -> tuple[dict | None, str | None]:
        """The state with rank 0's (epoch, step, sha256) -> (state, None), or (None, why it is not here)."""
        if choice is None:
            return None, None
        epoch, step, digest = choice
        if self.restored is not None and self.restored[DIGEST_KEY] == digest:
            return self.restored, None
        where = self.store.path(f"{CHECKPOINTS_DIR}/{epoch_dir_name(epoch, step)}")
        try:
            state = read_checkpoint(self.store, epoch, step)
        except CheckpointError as err:
            state, seen = None, str(err)
        else:
            seen = f"its sha256 is {state[DIGEST_KEY][:12]}"
        if state is not None and state[DIGEST_KEY] == digest:
            return state, None
        return None, (f"{where}: rank 0 resumes from this checkpoint (sha256 {digest[:12]}) but another rank "
                      f"cannot read it ({seen}); every node must see the same run directory (shared disk "
                      "or object storage)")

    def resume(self, learner, sync) -> tuple[int, list, dict | None, dict | None]:
        """Restore ``learner`` (a SoftLearner), the RNG states and ``sync``'s counts from the newest state
        -> (epochs done, which is the 0-based index of the first epoch to train; history of those epochs;
        model selection's best record or None; the next epoch's progress from a mid-epoch checkpoint, or
        None); (0, [], None, None) for a new run."""
        state = self.newest_state()
        if state is None:
            return 0, [], None, None
        learner.load_state_dict(state["learner"])
        set_rng_state(state["rng"])
        sync.restore(state["teacher_sync"])
        return state["epoch"], state["history"], state.get("selection"), state.get("epoch_progress")

    def save(self, epoch: int, metrics: dict, learner, sync, history: list, selection: dict | None = None) -> None:
        """The end of ``epoch``: report ``metrics`` to the launcher."""
        self.report(metrics, None, epoch)

    def save_step(self, epoch: int, progress: dict, learner, sync, history: list, selection: dict | None) -> None:
        """``progress`` (EpochProgress.state()) into the epoch after ``epoch``: rank 0 writes it."""

    def report_again(self, epoch: int, metrics: dict) -> None:
        """Report an epoch whose checkpoint already exists (the launcher stopped before hearing of it)."""
        self.report(metrics, None, epoch)


class CheckpointWriter(Checkpoints):
    """Rank 0's checkpoints: each epoch's state is written to a scratch folder, reported (which makes it
    durable in RUN/checkpoints), and then every older checkpoint is deleted. Rank 0 also chooses the
    state every rank resumes from."""

    chooses = True

    def _state(self, epoch: int, learner, sync, history: list, selection: dict | None) -> dict:
        return {"learner": learner.state_dict(), "epoch": epoch, "rng": rng_state(), "history": history,
                "config": to_dict(self.cfg), "noise_table_sha256": self.table_digest,
                "teacher_sync": sync.state(), "selection": selection}

    def save(self, epoch: int, metrics: dict, learner, sync, history: list, selection: dict | None = None) -> None:
        state = self._state(epoch, learner, sync, history, selection)
        with scratch_folder(self.store) as folder:
            self.report(metrics, write_state_folder(state, Path(folder)), epoch)
        prune_checkpoints(self.store, keep_epoch=epoch)

    def save_step(self, epoch: int, progress: dict, learner, sync, history: list, selection: dict | None) -> None:
        step = int(progress["steps"])
        state = {**self._state(epoch, learner, sync, history, selection), "step": step, "epoch_progress": progress}
        with scratch_folder(self.store) as folder:
            save_checkpoint(self.store, write_state_folder(state, Path(folder)), epoch, step)
        prune_checkpoints(self.store, keep_epoch=epoch, keep_step=step)
