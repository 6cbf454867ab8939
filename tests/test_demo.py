"""`soft-dist demo` as a newcomer meets it: on a machine where another local Ray instance already runs
(the test session's, holding the dashboard agent's fixed port), the demo starts its own, trains both
runs, and the next commands it prints (eval, export, predict on the photos it wrote, audit) run in order
on its own output and succeed. Shrunk to 2 epochs at 16 px; everything else is the demo's own setting."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys

import pytest

from soft_dist.cli import main


@pytest.mark.slow
def test_the_demo_runs_beside_another_ray_instance_and_its_next_commands_work(digit_shards, ray_cluster,
                                                                              tmp_path):
    import ray

    assert ray.is_initialized()  # the other instance, started first
    run_dir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SOFT_DIST_WORKER_LOGS")}
    demo = subprocess.run([sys.executable, "-m", "soft_dist", "demo", "--run-dir", str(run_dir), "--shards",
                           str(digit_shards), "--epochs", "2", "data.image_size=16", "model.width=16"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out[-3000:]
    for noise in ("Traceback", "WARNING", "\x1b"):
        assert noise not in out, f"{noise!r} in:\n{out}"
    curves = run_dir / "test_accuracy_per_epoch.png"
    assert f"test accuracy per epoch, both methods and branches: {curves}" in demo.stdout
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    commands = [line.strip() for line in demo.stdout.splitlines() if line.startswith("  soft-dist ")]
    assert [c.split()[1] for c in commands] == ["eval", "export", "predict", "audit"], out
    for command in commands:  # in this process, on the session's cluster where they use Ray
        assert main(shlex.split(command)[1:]) == 0, command
    soft = run_dir / "soft"
    assert json.loads((soft / "eval_test.json").read_text())["accuracy"] > 0.1
    assert (soft / "exported" / "model.onnx").is_file() and (soft / "exported" / "MODEL_CARD.md").is_file()
    photos = sorted(p.name for p in (run_dir / "photos").iterdir())
    with (soft / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(photos) == 6 and len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert (soft / "audit" / "audit.csv").is_file() and (soft / "audit" / "audit.html").is_file()
    for picture in (soft / "eval_test_confusion.png", soft / "audit" / "noise_transition.png"):
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
    assert not (run_dir / "ce" / "checkpoints").exists()  # only the audited run keeps its state
