"""`soft-dist demo` as a newcomer meets it: both runs train on a real local Ray cluster, and the next
commands it prints (eval, export, predict on the photos it wrote, audit) run in order on its own output
and succeed. Shrunk to 2 epochs at 16 px; everything else is the demo's own configuration."""

from __future__ import annotations

import csv
import json
import shlex

from soft_dist.cli import main


def test_the_commands_the_demo_prints_run_on_its_output(digit_shards, ray_cluster, tmp_path, capsys):
    run_dir = tmp_path / "demo"
    assert main(["demo", "--run-dir", str(run_dir), "--shards", str(digit_shards), "--epochs", "2",
                 "data.image_size=16"]) == 0
    out = capsys.readouterr().out
    commands = [line.strip() for line in out.splitlines() if line.startswith("  soft-dist ")]
    assert [c.split()[1] for c in commands] == ["eval", "export", "predict", "audit"]
    for command in commands:
        argv = shlex.split(command)[1:]
        assert main(argv) == 0, command
    soft = run_dir / "soft"
    assert json.loads((soft / "eval_test.json").read_text())["accuracy"] > 0.1
    assert (soft / "exported" / "model.onnx").is_file() and (soft / "exported" / "MODEL_CARD.md").is_file()
    photos = sorted(p.name for p in (run_dir / "photos").iterdir())
    with (soft / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(photos) == 6 and len(rows) == 6
    assert (soft / "audit" / "audit.csv").is_file() and (soft / "audit" / "audit.html").is_file()
    assert not (run_dir / "ce" / "checkpoints").exists()  # only the audited run keeps its state
