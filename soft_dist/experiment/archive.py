"""`soft-dist experiment archive DIR --out DEST`: an experiment's records without its weights.

A grid's folder holds, per cell, model.pt (tens of MB), TensorBoard events and the noise table beside the
few kilobytes that the tables, the report and `experiment compare` read. DEST gets only those::

    DEST/grid.yaml                       the grid copy (all a report needs)
    DEST/outcome.json                    the latest invocation's command, overrides, machine and time
    DEST/cells/<cell>/results.json       finished cells only
    DEST/cells/<cell>/metrics.jsonl      per-epoch records (the per-epoch plots, older cells' protocols)
    DEST/cells/<cell>/config.yaml        the resolved config that ran
    DEST/confusion/class_map.json, confusion.csv   when the grid derived its asymmetric map

so that DEST can be kept under version control and `experiment report DEST` / `experiment compare DEST ...`
work on it as on DIR. Paths under the current folder are written relative to it, so the records name no
machine's folders.

Archiving merges: cells already in DEST are left as they are (a retrained cell differs only in its timings;
delete a cell from DEST to replace it), new ones are added. Copying back the other way (``archive DEST --out
runs/x``) gives a later session the earlier cells, so that a grid can be finished seed by seed across
sessions and every seed paired in one folder. Both folders must hold the same grid.yaml (comments aside):
cells of another grid would be read under the wrong axes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from soft_dist.experiment.layout import GRID_COPY, OUTCOME, read_json
from soft_dist.run_files import CONFIG_FILE, METRICS_FILE, RESULTS_FILE

CELL_RECORDS = (RESULTS_FILE, METRICS_FILE, CONFIG_FILE)
CONFUSION_RECORDS = ("class_map.json", "confusion.csv")
OUTCOME_KEYS = ("command", "overrides", "machine", "finished_at")


class ArchiveError(ValueError):
    """A folder that cannot be archived, or archived into, naming it."""


@dataclass
class ArchiveOutcome:
    """Names of the finished cells copied now and of those DEST already held (left untouched)."""

    copied: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # cell folders in DIR without results.json


def _relative_paths(value, root: Path):
    """``value`` (a config mapping, list or string) with every absolute path under ``root`` made relative
    to it, in a string that is a path or contains one (a command line, a ``key=value`` override)."""
    if isinstance(value, dict):
        return {key: _relative_paths(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [_relative_paths(item, root) for item in value]
    if isinstance(value, str):  # a path, a command line, a key=value override, a grid file's text
        return "." if value == str(root) else value.replace(f"{root}/", "")
    return value


def _copy_config(source: Path, target: Path, root: Path) -> None:
    data = yaml.safe_load(source.read_text()) or {}
    target.write_text(yaml.safe_dump(_relative_paths(data, root), sort_keys=False))


def _grid_text(run_dir: Path, dest: Path, root: Path) -> str:
    """DIR's grid copy as DEST keeps it: paths under ``root`` relative to it (the copy of a grid that extends
    others names its files and base config by absolute path; a report reads none of them)."""
    source, existing = run_dir / GRID_COPY, dest / GRID_COPY
    if not source.is_file():
        raise ArchiveError(f"{run_dir} holds no {GRID_COPY}: is it a folder written by "
                           "`soft-dist experiment --grid FILE --run-dir DIR`?")
    text = _relative_paths(source.read_text(), root)
    # the same grid whatever its comments say: a grid file whose header was corrected since DEST's cells ran
    # still merges (DEST then keeps the newer text)
    if existing.is_file() and yaml.safe_load(_relative_paths(existing.read_text(), root)) != yaml.safe_load(text):
        raise ArchiveError(f"{dest}/{GRID_COPY} is another grid than {source}: archive each grid into "
                           "its own folder (or remove the older one)")
    return text


def archive_run(run_dir: str | Path, dest: str | Path, root: str | Path | None = None) -> ArchiveOutcome:
    """Copy the records of ``run_dir``'s finished cells into ``dest`` (created; merged when it exists).
    ``root`` (default the current folder) is the folder whose absolute paths become relative."""
    run_dir, dest = Path(run_dir).resolve(), Path(dest).resolve()
    root = Path(root).resolve() if root is not None else Path.cwd().resolve()
    if run_dir == dest:
        raise ArchiveError(f"--out {dest} is the folder being archived; name another")
    grid_text = _grid_text(run_dir, dest, root)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / GRID_COPY).write_text(grid_text)

    outcome = ArchiveOutcome()
    cells = run_dir / "cells"
    for folder in sorted(cells.iterdir()) if cells.is_dir() else []:
        if not folder.is_dir():
            continue
        if not (folder / RESULTS_FILE).is_file():
            outcome.unfinished.append(folder.name)
            continue
        target = dest / "cells" / folder.name
        if (target / RESULTS_FILE).is_file():
            outcome.kept.append(folder.name)
            continue
        partial = target.with_name(target.name + ".partial")  # a crash mid-copy leaves no half cell behind
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name in CELL_RECORDS:
            if not (folder / name).is_file():
                continue
            if name == CONFIG_FILE:
                _copy_config(folder / name, partial / name, root)
            else:
                shutil.copyfile(folder / name, partial / name)
        shutil.rmtree(target, ignore_errors=True)  # an interrupted training attempt there (no results.json)
        partial.rename(target)
        outcome.copied.append(folder.name)

    for name in CONFUSION_RECORDS:
        if (run_dir / "confusion" / name).is_file():
            (dest / "confusion").mkdir(exist_ok=True)
            shutil.copyfile(run_dir / "confusion" / name, dest / "confusion" / name)
    recorded = read_json(run_dir / OUTCOME)
    if recorded is not None and outcome.copied:  # the invocation that made the newest cells
        latest = {key: _relative_paths(recorded[key], root) for key in OUTCOME_KEYS if key in recorded}
        (dest / OUTCOME).write_text(json.dumps(latest, indent=2) + "\n")
    return outcome
