"""Comparisons across experiment folders: an ablation grid against the grid it varies.

A grid's own report pairs its methods with each other. An ablation is usually a second grid (same
schedule, noise, seeds and folds; one setting changed, e.g. ``method.sls_start_epoch``) in a folder of its
own, and the question is how each of its runs moved against the run of the first grid on the same unit
(seed, fold, split seed). ``soft-dist experiment compare DIR DIR ...`` answers it from the folders alone:

* every finished cell of every folder becomes one row labelled by its *variant*: the method plus the
  values of the folder's extra axes (``soft``, ``soft sls_start_epoch=10``);
* per variant and protocol: n, mean ± std and the 95% interval (as in a report);
* paired differences between variants of DIFFERENT folders on the same noise kind, rate and units
  (pairs inside one folder are in that folder's own report).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd

from soft_dist.experiment.report import (
    ReportError,
    load_run_grid,
    markdown_table,
    paired_section,
    protocol_section,
)
from soft_dist.experiment.summary import REPORTED_PROTOCOLS, collect, paired, summarise

FOLDER_COLUMN = "folder"


def _variant(row: pd.Series, extra_keys: list[str]) -> str:
    parts = [str(row["method"])] + [f"{key.split('.')[-1]}={row[key]}" for key in extra_keys]
    return " ".join(parts)


def variant_table(run_dirs: list[Path]) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(rows of every finished cell with ``method`` replaced by its variant label, the variants in folder
    and grid order, the unit keys all folders share)."""
    tables, order, unit_sets = [], [], []
    for run_dir in run_dirs:
        grid = load_run_grid(run_dir)
        table = collect(grid.cells(), Path(run_dir))
        unit_sets.append(list(grid.unit_keys))
        if table.empty:
            continue
        extra = list(grid.extra)
        table = table.copy()
        table["method"] = [_variant(row, extra) for _, row in table.iterrows()]
        table[FOLDER_COLUMN] = str(run_dir)
        tables.append(table.drop(columns=[k for k in extra if k in table.columns]))
        order += [v for v in dict.fromkeys(table["method"]) if v not in order]
    if not tables:
        raise ReportError(f"no finished cells in {[str(d) for d in run_dirs]}")
    units = [k for k in unit_sets[0] if all(k in s for s in unit_sets)]
    return pd.concat(tables, ignore_index=True), order, units


def compare_folders(run_dirs: list[str | Path]) -> str:
    """The Markdown comparison of the experiment folders ``run_dirs`` (see the module docstring)."""
    run_dirs = [Path(d) for d in run_dirs]
    if len(run_dirs) < 2:
        raise ReportError("compare needs at least two experiment folders")
    table, order, units = variant_table(run_dirs)
    summary = summarise(table, [], order)
    pairs = paired(table, [], units, order)
    folder_of = dict(zip(table["method"], table[FOLDER_COLUMN]))
    across = [(a, b) for a, b in itertools.combinations(order, 2) if folder_of[a] != folder_of[b]]
    keep = pairs.apply(lambda r: (r["baseline"], r["method"]) in across, axis=1) if not pairs.empty else []
    lines = ["# Comparison of experiment folders", "",
             *markdown_table(["folder", "variants (finished runs)"],
                     [[f"`{d}`", ", ".join(f"{v} ({int((table['method'] == v).sum())})"
                                          for v in order if folder_of.get(v) == str(d)) or "—"]
                      for d in run_dirs]),
             "", f"Runs are paired on equal noise kind, rate and {', '.join(units) or 'nothing'}; percent.", ""]
    for protocol in REPORTED_PROTOCOLS:
        lines += protocol_section(protocol, summary, table, [])
    lines += paired_section(pairs[keep] if len(pairs) else pairs, [], units)
    return "\n".join(lines).rstrip() + "\n"
