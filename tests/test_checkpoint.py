"""Checkpoints and model.pt: weights_only files, completeness, RNG round trips, and a single-process run
that is cut short and continued (with a half-written newer checkpoint in the way) ending exactly like an
uninterrupted one."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from soft_dist.config import load_config
from soft_dist.data.memory_loaders import digits_memory_loaders
from soft_dist.method.model import build_student
from soft_dist.noise.table import build_noise_table
from soft_dist.storage import RunStore
from soft_dist.train import checkpoints as ckpt
from soft_dist.train.model_file import load_model
from soft_dist.train.local import fit_local
from two_ranks import on_two_ranks

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits_cpu.yaml"
# 16 px keeps each epoch to a couple of seconds; the teacher, the head switch and the ramp all run.
SMALL = ["data.image_size=16", "model.width=16", "method.stage1_epochs=1", "method.rampup_epochs=1",
         "train.batch_size=128"]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    saved = ckpt.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(saved, tmp_path / "rng.pt")
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_incomplete_checkpoints_are_passed_over(tmp_path):
    store = RunStore(tmp_path)
    for epoch in (0, 1):
        folder = ckpt.write_state_folder({"epoch": epoch, "payload": torch.arange(1000)}, tmp_path / f"w{epoch}")
        ckpt.save_checkpoint(store, folder, epoch)
    assert ckpt.latest_state(store)["epoch"] == 1
    newest = tmp_path / "checkpoints" / "epoch_0001" / ckpt.STATE_FILE
    newest.write_bytes(newest.read_bytes()[:-10])  # a copy cut short by a dying worker
    skipped = []
    assert ckpt.latest_state(store, skipped=skipped.append)["epoch"] == 0
    assert len(skipped) == 1 and "epoch_0001" in skipped[0] and "incomplete" in skipped[0]
    (tmp_path / "checkpoints" / "epoch_0000" / ckpt.META_FILE).unlink()  # meta.json never arrived
    assert ckpt.latest_state(store) is None


def _each_rank_resumes(rank: int, cases: list, out_dir: str) -> None:
    """One process of a 2-rank gloo group: for each case, the state this rank's Checkpoints resumes from,
    written to out_dir/case<i>-rank<r>.json as ["ok", [epoch, sha256] or null] or ["error", message]."""
    for i, run_dirs in enumerate(cases):
        kind = ckpt.CheckpointWriter if rank == 0 else ckpt.Checkpoints
        checkpoints = kind(RunStore(run_dirs[rank]), report=None, cfg=None, table_digest="table")
        try:
            state = checkpoints.newest_state()
            answer = ["ok", None if state is None else [state["epoch"], _sha256_of(state)]]
        except ckpt.CheckpointError as err:
            answer = ["error", str(err)]
        Path(out_dir, f"case{i}-rank{rank}.json").write_text(json.dumps(answer))


def _sha256_of(state: dict) -> str:
    """Which bytes a state was read from: the first weight tells the test's states apart."""
    return state.get(ckpt.DIGEST_KEY, f"w={int(state['w'][0])}")


def test_every_rank_resumes_from_the_checkpoint_rank_0_chose(tmp_path):
    """Two real ranks whose views of the run directory differ (as node-local disks or a lagging object
    store would) still start from the same epoch and bytes, or both stop with the same error."""
    def run_with(epochs: list[int], name: str) -> str:
        store = RunStore(tmp_path / name)
        for epoch in epochs:
            state = {"epoch": epoch, "noise_table_sha256": "table", "history": [], "w": torch.full((8,), epoch)}
            ckpt.save_checkpoint(store, ckpt.write_state_folder(state, tmp_path / "scratch" / f"{name}{epoch}"), epoch)
        return str(tmp_path / name)

    chief = run_with([1, 2], "chief")
    ahead = run_with([], "ahead")  # epoch 2's very bytes, plus a newer epoch 3 that rank 0 cannot see
    shutil.copytree(Path(chief, "checkpoints"), Path(ahead, "checkpoints"))
    run_with([3], "ahead")
    behind = run_with([1], "behind")  # rank 0's epoch 2 never reached this rank
    cases = [(chief, chief), (chief, ahead), (chief, behind), (run_with([], "new"), behind)]
    on_two_ranks(_each_rank_resumes, tmp_path, cases, str(tmp_path))
    answers = [[json.loads((tmp_path / f"case{i}-rank{r}.json").read_text()) for r in (0, 1)]
               for i in range(len(cases))]
    epoch2 = ["ok", [2, _sha256_of(ckpt.read_checkpoint(RunStore(chief), 2))]]
    assert answers[0] == [epoch2, epoch2]
    assert answers[1] == [epoch2, epoch2]  # not rank 1's own newest (3)
    assert answers[2][0] == answers[2][1] and answers[2][0][0] == "error"
    assert "epoch_0002" in answers[2][0][1] and "rank 0 resumes from this checkpoint" in answers[2][0][1]
    assert answers[3] == [["ok", None], ["ok", None]]  # a new run everywhere, whatever rank 1 sees


def test_model_file_errors_name_the_file(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no model file"):
        load_model(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"not a model")
    with pytest.raises(ckpt.CheckpointError, match=str(tmp_path / "model.pt")):
        load_model(tmp_path / "model.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a soft-dist model file"):
        load_model(tmp_path / "other.pt")


def _run(run_dir: Path, epochs: int, *overrides: str) -> dict:
    cfg = load_config(CONFIG, [*SMALL, f"train.epochs={epochs}", *overrides])
    loaders, num_classes, splits = digits_memory_loaders(cfg)
    table = build_noise_table(splits, num_classes, "symmetric", 0.3, seed=0)
    return fit_local(cfg, loaders, num_classes, table, run_dir, progress=False, verbose=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("whole")
    return run_dir, _run(run_dir, epochs=3)


def test_state_and_model_load_with_weights_only(uninterrupted):
    run_dir, results = uninterrupted
    state = torch.load(run_dir / "checkpoints" / "epoch_0003" / ckpt.STATE_FILE, weights_only=True)
    assert state["epoch"] == 3 and state["learner"]["global_step"] == 3 * 10  # 1,258 images, 128 per step
    assert {"student", "teacher", "optimizer"} <= set(state["learner"]) and state["config"]["train"]["epochs"] == 3
    model = load_model(run_dir)
    meta = model.meta
    selection = results["model"]
    assert (meta["epoch"], meta["branch"]) == (selection["epoch"], selection["branch"])
    assert meta["classes"] == [str(i) for i in range(10)] and meta["image_size"] == 16
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["channel_order"] == "RGB"
    assert not any(k.startswith("uncertainty.") for k in model.state_dict)
    # The weights reproduce the validation accuracy the selection recorded.
    cfg = load_config(CONFIG, SMALL)
    loaders, _, _ = digits_memory_loaders(cfg)
    net, _ = build_student(cfg.model.name, 10, 16, cfg.model.small_stem, cfg.model.pretrained, width=cfg.model.width,
                           uncertainty=False)
    net.load_state_dict(model.state_dict)
    from soft_dist.train.epoch import predict, report_predictions
    from soft_dist.noise.table import NoiseTable

    table = NoiseTable.load(run_dir / "noise_table.csv")
    val = report_predictions(*predict(net, loaders.val.epoch(0)), 10, table.lookup())
    assert val["accuracy"] == pytest.approx(selection["val"]["accuracy"], abs=1e-12)
    # SOFT has an EMA teacher: under train.model_epoch=auto model.pt holds the last epoch
    assert (selection["rule"], selection["protocol"], selection["epoch"]) == ("last", "last", 3)


def test_model_epoch_best_keeps_the_best_validation_epoch_never_a_worse_later_one(tmp_path):
    results = _run(tmp_path, 3, "train.model_epoch=best")
    selection = results["model"]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val_curve = [max(r["val"][b]["accuracy"] for b in r["val"]) for r in lines]
    assert selection["score"] == max(val_curve) and selection["epoch"] == val_curve.index(max(val_curve)) + 1
    assert (selection["rule"], selection["protocol"]) == ("best", "val_selected")
    assert load_model(tmp_path).meta["epoch"] == selection["epoch"]
    assert [x["selected_epoch"] for x in lines][-1] == selection["epoch"]


def test_cut_short_run_continues_exactly(uninterrupted, tmp_path):
    _run(tmp_path, epochs=2)  # stops after epoch 2, like a run killed there
    # A checkpoint written before the history kept val/test (older versions): its epoch 1 must come from
    # metrics.jsonl, epoch 2 from the history, for results.json's protocols.
    newest = tmp_path / "checkpoints" / "epoch_0002"
    state = ckpt.read_state_folder(newest)
    assert [{"val", "test"} <= set(h) for h in state["history"]] == [True, True]
    state["history"][0] = {k: v for k, v in state["history"][0].items() if k not in ("val", "test")}
    ckpt.write_state_folder(state, newest)
    # A half-written checkpoint of epoch 3 (the process died while copying it) must be ignored.
    partial = tmp_path / "checkpoints" / "epoch_0003"
    shutil.copytree(tmp_path / "checkpoints" / "epoch_0002", partial)
    (partial / ckpt.STATE_FILE).write_bytes((partial / ckpt.STATE_FILE).read_bytes()[:1000])
    # ... and what a writer killed earlier left: its scratch folder and a staging copy.
    for leftover in (f"{ckpt.PARTIAL_PREFIX}dead", ".epoch_0002.abc123.tmp"):
        shutil.copytree(partial, tmp_path / "checkpoints" / leftover)
    results = _run(tmp_path, epochs=3)
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # counted from 1, as everywhere
    whole = uninterrupted[1]
    for split in ("val", "test"):
        for branch in ("student", "teacher"):
            assert results[split][branch]["accuracy"] == whole[split][branch]["accuracy"]
    assert results["model"]["epoch"] == whole["model"]["epoch"]
    assert results["protocols"] == whole["protocols"] and results["protocols"]["epochs"] == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0003"]


def test_a_resumed_teacher_pool_run_continues_exactly(tmp_path):
    """soft_pool: the pool of past teachers rides in the checkpoint, so a run cut after epoch 2 continues
    to the same epoch-3 numbers and the same pool as one that never stopped."""
    whole = _run(tmp_path / "whole", 3, "method.name=soft_pool")
    _run(tmp_path / "cut", 2, "method.name=soft_pool")
    resumed = _run(tmp_path / "cut", 3, "method.name=soft_pool")
    pools = [[json.loads(x)["teacher_pool"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
             for name in ("whole", "cut")]
    assert pools[0] == pools[1] and len(pools[0][-1]) == 3  # a member per epoch, best first
    state = ckpt.read_state_folder(tmp_path / "cut" / "checkpoints" / "epoch_0003")
    assert [m["epoch"] for m in state["learner"]["teacher_pool"]] == [m["epoch"] for m in pools[0][-1]]
    for split in ("val", "test"):
        assert resumed[split] == whole[split]
    assert resumed["protocols"] == whole["protocols"]


@pytest.mark.parametrize("change, field", [
    ({"architecture": {"name": "vgg11", "small_stem": True}}, "architecture.name"),
    ({"architecture": {"name": "resnet18", "small_stem": True, "width": 2}}, "architecture.width"),
    ({"mean": [0.5, 0.5]}, "mean"),
    ({"std": [0.5, 0.0, 0.5]}, "std"),
    ({"image_size": 0}, "image_size"),
    ({"classes": ["only"]}, "classes"),
    ({"num_classes": 7}, "num_classes"),
    ({"eval_crop_fraction": float("nan")}, "eval_crop_fraction"),
])
def test_bad_model_metadata_exits_2_naming_the_field(reference_run, tmp_path, capsys, change, field):
    from soft_dist.cli import main

    payload = torch.load(reference_run / "model.pt", map_location="cpu", weights_only=True)
    payload["meta"].update(change)
    torch.save(payload, tmp_path / "model.pt")
    for command in (["export", "--out", str(tmp_path / "out"), str(tmp_path / "model.pt")],
                    ["predict", str(tmp_path / "model.pt"), str(tmp_path), "--out", str(tmp_path / "p.csv")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"metadata field '{field}'" in err and "model.pt" in err and "Traceback" not in err


class _Crash(Exception):
    """The process dying at an injected point (raised in this process; the run directory is what survives)."""


_TIMING = {"seconds", "images_per_s", "images_per_s_per_worker", "wall_time_s", "throughput",
           "share_of_train_time", "checkpoints"}


def _without_timing(node):
    if isinstance(node, dict):
        return {k: _without_timing(v) for k, v in node.items() if k not in _TIMING}
    if isinstance(node, list):
        return [_without_timing(v) for v in node]
    return node


@pytest.mark.parametrize("method, epoch", [
    ("RunLog.record", 1),          # epoch 1 is always a new best: nothing of it may be in model.pt yet
    ("CheckpointWriter.save", 1),  # epoch 1 is always a new best: its state is committed, its model.pt not
    ("RunLog.finish", 3),          # results.json written, the last state not
    ("CheckpointWriter.save", 3),  # the last state committed, model.pt (if epoch 3 is the best) not
    ("CheckpointWriter.save_step", 0),  # mid-epoch 1, after step 4 of 10 (train.checkpoint_every_steps=4)
    ("CheckpointWriter.save_step", 2),  # mid-epoch 3, after step 4: epoch 2's checkpoint and model.pt are in
])
def test_a_crash_between_any_two_writes_resumes_to_the_same_files(uninterrupted, tmp_path, monkeypatch, method,
                                                                 epoch):
    from soft_dist.train.checkpoints import CheckpointWriter
    from soft_dist.train.runlog import RunLog

    owner = {"CheckpointWriter": CheckpointWriter, "RunLog": RunLog}[method.split(".")[0]]
    name = method.split(".")[1]
    original = getattr(owner, name)

    def crashing(self, *args, **kwargs):
        original(self, *args, **kwargs)
        at = args[0] if name in ("save", "save_step", "record") else 3  # finish() only runs at the last epoch
        if at == epoch:
            raise _Crash(f"died after {method} of epoch {at}")

    monkeypatch.setattr(owner, name, crashing)
    # Step checkpoints change nothing in what is trained: the run with them must end as the one without.
    steps = ["train.checkpoint_every_steps=4"] if name == "save_step" else []
    with pytest.raises(_Crash):
        _run(tmp_path, 3, *steps)
    # What the crash left: model.pt holds an epoch whose checkpoint is committed (one the resumed history keeps)
    committed = max(ckpt.checkpoint_epochs(RunStore(tmp_path)), default=0)
    if (tmp_path / "model.pt").exists():
        assert load_model(tmp_path).meta["epoch"] <= committed
    if steps:  # the newest checkpoint is the one written mid-epoch, beside the last epoch's own
        assert ckpt.checkpoint_positions(RunStore(tmp_path))[:2] == [(epoch, 4)] + ([(epoch, 0)] if epoch else [])
    monkeypatch.setattr(owner, name, original)
    _run(tmp_path, 3, *steps)  # the same command again: it resumes

    whole, _ = uninterrupted
    expected, got = load_model(whole), load_model(tmp_path)
    assert got.meta["selection"] == expected.meta["selection"]
    assert all(torch.equal(got.state_dict[k], v) for k, v in expected.state_dict.items())
    read = lambda run, f: (run / f).read_text()  # noqa: E731
    assert _without_timing(json.loads(read(tmp_path, "results.json"))) == _without_timing(
        json.loads(read(whole, "results.json")))
    got, want = ([_without_timing(json.loads(x)) for x in read(run, "metrics.jsonl").splitlines()]
                 for run in (tmp_path, whole))
    # Only the record of the epoch the crash cut says so: resumed at step 4, and this process trained its
    # images from there (the run's count, images_all_ranks, is the whole split).
    for line in want:
        assert line["train"].pop("resumed_at_step") == 0
    for line in got:
        cut = steps and line["epoch"] == epoch + 1
        assert line["train"].pop("resumed_at_step") == (4 if cut else 0)
        if cut:
            line["train"]["images"] += 4 * 128
    assert got == want
    if steps:
        assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0003"]
