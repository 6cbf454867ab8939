"""Running a grid: one Ray Train run per cell, finished cells skipped, failures recorded, then the
summary and the plots.

Layout of the experiment folder DIR (paths: soft_dist.experiment.layout)::

    grid.yaml                 a copy of the grid file, extended grids written out (a report needs no other file)
    cells/<cell name>/        one run directory each (config.yaml, noise_table.csv, ray/, results.json)
    confusion/                asymmetric_from: confusion only: run/ (plain CE on clean labels),
                              confusion.csv (validation confusion matrix [C, C]), class_map.json
    cells.csv                 one row per finished cell, with every evaluation protocol's numbers
    summary.csv, summary.json n, mean, std and 95% t-interval over runs per protocol; summary.json also
                              lists failed cells
    paired.csv                method against method on the same runs, per protocol
    failed.csv                cells that failed in the latest invocation, with the error
    outcome.json              the latest invocation: trained/skipped/failed, grid, command, machine
    plots/*.png               see soft_dist.experiment.grid_plots
    report.md                 see soft_dist.experiment.report
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from soft_dist.config import Config, load_config, to_dict
from soft_dist.experiment.grid import AXIS_KEYS, Cell, Grid, GridError, check_overrides, flattened_grid_text
from soft_dist.experiment.layout import GRID_COPY, OUTCOME, REPORT, cell_dir, is_finished, machine
from soft_dist.progress import counted


@dataclass
class GridOutcome:
    """What one invocation did: names of cells trained now, skipped (already finished) and failed."""

    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {"cell": name, "error": "Type: message"}
    outputs: dict = field(default_factory=dict)  # name -> path of summary files and plots


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".strip()


def copy_grid(grid: Grid, run_dir: Path) -> Path:
    """DIR/grid.yaml: the grid file as it is now (the latest invocation's cells are what the tables show),
    with the keys it inherits written out when it extends another grid, so that the copy stands alone."""
    target = run_dir / GRID_COPY
    if grid.path.resolve() == target.resolve():
        return target
    flattened = flattened_grid_text(grid)
    if flattened is None:
        shutil.copyfile(grid.path, target)
    else:
        target.write_text(flattened)
    return target


def write_outcome(run_dir: Path, grid: Grid, outcome: "GridOutcome", command: str | None,
                  overrides: list[str]) -> Path:
    """outcome.json: what this invocation did and where, for the report's header."""
    path = run_dir / OUTCOME
    path.write_text(json.dumps(
        {"trained": outcome.trained, "skipped": outcome.skipped, "failed": outcome.failed,
         "outputs": {k: str(v) for k, v in outcome.outputs.items()},
         "grid": str(grid.path), "base": str(grid.base), "grid_copy": GRID_COPY, "command": command,
         "overrides": overrides, "machine": machine(),
         "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=2))
    return path


def write_tables_plots_report(grid: Grid, run_dir: Path, outcome: "GridOutcome", log: Callable[[str], None],
                              command: str | None = None, overrides: list[str] | None = None,
                              record_outcome: bool = True) -> None:
    """After the cells: the tables, the plots, outcome.json (unless ``record_outcome`` is false) and
    report.md. A plot or report that fails is recorded in the outcome as a failed "(plots)" /
    "(report)" entry; the tables are always written."""
    from soft_dist.experiment.grid_plots import write_plots
    from soft_dist.experiment.report import write_report
    from soft_dist.experiment.summary import write_summary

    cells = grid.cells()
    outcome.outputs.update(write_summary(grid, cells, run_dir, outcome.failed))
    try:
        outcome.outputs.update(write_plots(grid, cells, run_dir, log=log))
    except Exception as err:  # noqa: BLE001 - the tables are written; say what went wrong with the plots
        outcome.failed.append({"cell": "(plots)", "error": _error_text(err)})
        log(f"[experiment] plots FAILED: {_error_text(err)}")
        write_summary(grid, cells, run_dir, outcome.failed)
    outcome.outputs[GRID_COPY] = copy_grid(grid, run_dir)
    outcome.outputs[REPORT] = run_dir / REPORT

    def record() -> None:
        if record_outcome:
            write_outcome(run_dir, grid, outcome, command, list(overrides or []))

    record()  # before the report: its header reads outcome.json
    try:
        write_report(run_dir, refresh=False)
    except Exception as err:  # noqa: BLE001 - tables and plots are written; say what went wrong
        del outcome.outputs[REPORT]
        outcome.failed.append({"cell": "(report)", "error": _error_text(err)})
        log(f"[experiment] report FAILED: {_error_text(err)}")
        write_summary(grid, cells, run_dir, outcome.failed)
        record()


def select_cells(cells: list[Cell], patterns: list[str]) -> list[Cell]:
    """The cells whose names match one of the shell ``patterns``, in grid order; a pattern that matches
    nothing is an error (a typo must not train nothing and report success)."""
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(c.name, pattern) for c in cells):
            names = ", ".join(c.name for c in cells[:4]) + (", ..." if len(cells) > 4 else "")
            raise GridError("--cells", f"{pattern!r} matches no cell of this grid (a pattern matches whole names, "
                            f"like {names})")
    return [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]


def cell_config(grid: Grid, cell: Cell, common: list[str], asym_overrides: list[str] | None):
    """The training config of one cell: base file, common overrides, the derived class map for
    asymmetric cells, then the cell's own axes (applied last)."""
    extra = (asym_overrides or []) if cell.noise_kind == "asymmetric" else []
    return load_config(grid.base, [*common, *extra, *cell.overrides()])


def prepare_cells(grid: Grid, cells: list[Cell], common: list[str], asym_overrides: list[str] | None,
                  run_dir: Path) -> tuple[dict[str, Config], dict[str, str]]:
    """The configs of the unfinished ``cells``, made before any cell trains, and the errors of those whose
    config or noise table cannot be made: ({cell name: config}, {cell name: error}). A class map that names
    no target for a class fails every asymmetric cell; it should say so once, not after each earlier cell's
    training. The noise table is made once per distinct data + noise setting (reading the shards' labels)."""
    from soft_dist.noise.setup import make_noise_table

    configs: dict[str, Config] = {}
    problems: dict[str, str] = {}
    checked: dict[str, str | None] = {}  # data + noise settings -> the error, or None
    for cell in cells:
        if is_finished(cell_dir(run_dir, cell)):
            continue
        try:
            cfg = cell_config(grid, cell, common, asym_overrides)
        except Exception as err:  # noqa: BLE001 - recorded as the cell's failure
            problems[cell.name] = _error_text(err)
            continue
        key = json.dumps({"data": to_dict(cfg.data), "noise": to_dict(cfg.noise)}, sort_keys=True, default=str)
        if key not in checked:
            try:
                make_noise_table(cfg)
                checked[key] = None
            except Exception as err:  # noqa: BLE001 - recorded as the cell's failure
                checked[key] = _error_text(err)
        if checked[key] is not None:
            problems[cell.name] = checked[key]
        else:
            configs[cell.name] = cfg
    return configs, problems


def _log_problems(problems: dict[str, str], total: int, log: Callable[[str], None]) -> None:
    """One line per distinct error, naming its cells (the first three and a count)."""
    by_error: dict[str, list[str]] = {}
    for name, error in problems.items():
        by_error.setdefault(error, []).append(name)
    for error, names in by_error.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        log(f"[experiment] {len(names)} of {total} cells cannot start ({shown}): {error}")


def run_grid(
    grid: Grid,
    run_dir: str | Path,
    overrides: list[str] | None = None,
    log: Callable[[str], None] = print,
    command: str | None = None,
    only: list[str] | None = None,
) -> GridOutcome:
    """Train every unfinished cell of ``grid`` into ``run_dir``, then write the summary and plots.

    ``overrides`` (dotted key=value) apply to every cell after the grid file's own; they may not name a
    grid axis. A cell that raises is recorded in the outcome (and failed.csv) and the grid continues.
    ``command`` (the command line, for the report's header) is recorded in outcome.json. ``only`` (shell
    patterns on whole cell names, such as ``*-fold3*``) trains just the cells that match one of them,
    e.g. to run a grid fold by fold or to split it over machines sharing ``run_dir``; the tables still
    cover every finished cell."""
    from soft_dist.train.ray_trainer import run_training

    run_dir = Path(run_dir).resolve()
    overrides = list(overrides or [])
    check_overrides(overrides, "command line", None, AXIS_KEYS + tuple(grid.extra))
    common = [*grid.overrides, *overrides]
    cells = select_cells(grid.cells(), only) if only else grid.cells()  # a typo fails before any write
    run_dir.mkdir(parents=True, exist_ok=True)
    copy_grid(grid, run_dir)  # first: a report can be made from a grid that is still running
    outcome = GridOutcome()

    asym_overrides: list[str] | None = []
    asym_error = None
    if grid.asymmetric_from == "confusion" and any(c.noise_kind == "asymmetric" for c in cells):
        from soft_dist.experiment.confusion import class_map_override, derive_class_map

        try:
            class_map = derive_class_map(grid.base, common, run_dir / "confusion", log=log)
            asym_overrides = class_map_override(class_map)
        except Exception as err:  # every asymmetric cell fails with this error; the others still run
            asym_error = f"asymmetric_from confusion: {_error_text(err)}"
            log(f"[experiment] {asym_error}")
            (run_dir / "confusion").mkdir(parents=True, exist_ok=True)
            (run_dir / "confusion" / "error.txt").write_text(traceback.format_exc())

    configs, problems = prepare_cells(grid, [c for c in cells if not (c.noise_kind == "asymmetric" and asym_error)],
                                      common, asym_overrides, run_dir)
    _log_problems(problems, len(cells), log)
    for number, cell in enumerate(cells, 1):
        folder = cell_dir(run_dir, cell)
        head = f"[experiment {number}/{len(cells)}] {cell.name}"
        if is_finished(folder):
            outcome.skipped.append(cell.name)
            log(f"{head}: finished earlier, skipped")
            continue
        if cell.name in problems:  # said above, once per error
            outcome.failed.append({"cell": cell.name, "error": problems[cell.name]})
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "error.txt").write_text(f"found before any cell trained: {problems[cell.name]}\n")
            continue
        start = time.perf_counter()
        try:
            if cell.noise_kind == "asymmetric" and asym_error:
                raise RuntimeError(asym_error)
            cfg = configs[cell.name]
            if folder.exists():
                # An interrupted earlier attempt (no results.json): start the cell again from scratch.
                shutil.rmtree(folder)
            log(f"{head}: training ({cfg.train.epochs} epochs, {counted(cfg.train.workers, 'worker')})")
            results = run_training(cfg, folder)
            test = (results.get("test") or results["val"])["chosen"]
            outcome.trained.append(cell.name)
            log(f"{head}: test accuracy {test['accuracy']:.4f} ({time.perf_counter() - start:.0f} s)")
        except Exception as err:  # noqa: BLE001 - a failing cell must not stop the grid
            outcome.failed.append({"cell": cell.name, "error": _error_text(err)})
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "error.txt").write_text(traceback.format_exc())
            log(f"{head}: FAILED: {_error_text(err)}")

    write_tables_plots_report(grid, run_dir, outcome, log, command, overrides)
    return outcome
