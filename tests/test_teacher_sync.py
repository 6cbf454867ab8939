"""Teachers kept identical across ranks (soft_dist/train/teacher_sync.py) in whole runs on two real gloo
ranks: each rank runs train_rank, the code of a Ray Train worker, on its half of the digit shards (10 steps
per epoch); no Ray, which adds nothing to what the ranks exchange."""

from __future__ import annotations

import json
from pathlib import Path

from soft_dist.config import load_config
from two_ranks import prepare_run, train_runs_on_two_ranks

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits_cpu.yaml"


def test_teacher_buffers_synced_every_k_steps_or_never_pass_every_check(digit_shards, tmp_path):
    """Buffers drift between syncs (k > 1) or always (0, each rank keeps its own); the check after every
    step compares the parameters always and the buffers only while they are meant to be identical."""
    runs = {k: tmp_path / f"buffers-every-{k}" for k in (0, 3)}
    for k, run_dir in runs.items():
        # digits train split = 1,258 images; batch 64 over 2 ranks -> 10 steps per epoch per rank
        prepare_run(load_config(CONFIG, [
            f"data.shards={digit_shards}", "data.image_size=16", "model.width=16", "train.epochs=1",
            "method.stage1_epochs=1", "method.rampup_epochs=1", "train.workers=2", "train.sync_check_every=1",
            f"train.teacher_buffer_sync_every={k}"]), run_dir)
    train_runs_on_two_ranks(list(runs.values()), tmp_path)
    for k, run_dir in runs.items():
        results = json.loads((run_dir / "results.json").read_text())
        sync = results["teacher_sync"]
        assert sync["mismatches"] == 0 and sync["checks"] >= 10  # 10 steps per rank, plus the epoch's end
        # k = 3: after steps 3, 6, 9 and once more at the epoch's end (step 10 was not a sync step)
        assert sync["buffer_syncs"] == (0 if k == 0 else 4)
        digests = results["teacher_digests"]  # of the whole teacher, buffers included
        assert (digests[0] == digests[1]) == (k != 0)  # never synced: each rank's own BN statistics
