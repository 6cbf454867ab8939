"""Where things are in an experiment folder DIR, shared by the runner, the tables, the plots and the
report (a module of its own so that none of them has to import another for a path).

    DIR/grid.yaml             the grid the latest invocation ran, inherited keys written out (all a report needs)
    DIR/cells/<cell name>/    one run directory per cell: results.json when finished, metrics.jsonl
    DIR/outcome.json          the latest invocation: trained/skipped/failed, grid, command, machine
    DIR/summary.json          tables' metadata; DIR/report.md the report
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from soft_dist.experiment.grid import Cell
from soft_dist.run_files import METRICS_FILE, RESULTS_FILE  # a cell is a run directory

GRID_COPY = "grid.yaml"
OUTCOME = "outcome.json"
SUMMARY_JSON = "summary.json"
REPORT = "report.md"
PLOTS_DIR = "plots"


def cell_dir(run_dir: Path, cell: Cell) -> Path:
    return Path(run_dir) / "cells" / cell.name


def is_finished(folder: Path) -> bool:
    return (Path(folder) / RESULTS_FILE).is_file()


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when there is no such file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def read_cell_metrics(folder: Path) -> list[dict]:
    """The per-epoch records of a cell's metrics.jsonl ([] when there is none)."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def machine() -> dict:
    """The machine this process runs on, as a report header shows it (stdlib only)."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": sys.version.split()[0]}
