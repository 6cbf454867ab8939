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

With several *settings* (``--setting A B --setting C D ...``: each a group of folders on the same data, such
as a grid and its ablation at 30% and the same pair at 50%), :func:`pool_settings` pairs runs inside each
setting as above and then pools every variant pair's differences over the settings into one paired
interval, with a row per setting and per seed under model.pt, so that "does it win across regimes" is one
command's answer. Runs of different settings are never paired with each other.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd

from soft_dist.experiment.report import (
    ReportError,
    load_run_grid,
    markdown_table,
    noise_label,
    paired_section,
    paired_stat_cells,
    protocol_section,
)
from soft_dist.experiment.summary import (
    MODEL_PT,
    REPORTED_PROTOCOLS,
    aggregate_differences,
    collect,
    paired,
    paired_differences,
    summarise,
)

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


def _cross_folder(pairs: pd.DataFrame, table: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """The rows of ``pairs`` (method, baseline columns) whose two variants come from different folders."""
    folder_of = dict(zip(table["method"], table[FOLDER_COLUMN]))
    across = {(a, b) for a, b in itertools.combinations(order, 2) if folder_of[a] != folder_of[b]}
    if pairs.empty:
        return pairs
    return pairs[pairs.apply(lambda r: (r["baseline"], r["method"]) in across, axis=1)]


def compare_folders(run_dirs: list[str | Path]) -> str:
    """The Markdown comparison of the experiment folders ``run_dirs`` (see the module docstring)."""
    run_dirs = [Path(d) for d in run_dirs]
    if len(run_dirs) < 2:
        raise ReportError("compare needs at least two experiment folders")
    table, order, units = variant_table(run_dirs)
    summary = summarise(table, [], order)
    pairs = _cross_folder(paired(table, [], units, order), table, order)
    folder_of = dict(zip(table["method"], table[FOLDER_COLUMN]))
    lines = ["# Comparison of experiment folders", "",
             *markdown_table(["folder", "variants (finished runs)"],
                     [[f"`{d}`", ", ".join(f"{v} ({int((table['method'] == v).sum())})"
                                          for v in order if folder_of.get(v) == str(d)) or "—"]
                      for d in run_dirs]),
             "", f"Runs are paired on equal noise kind, rate and {', '.join(units) or 'nothing'}; percent.", ""]
    for protocol in REPORTED_PROTOCOLS:
        lines += protocol_section(protocol, summary, table, [])
    lines += paired_section(pairs, [], units)
    return "\n".join(lines).rstrip() + "\n"


def setting_label(run_dirs: list[Path]) -> str:
    """A setting's name in the tables: its folders' names joined with '+'."""
    return " + ".join(Path(d).name for d in run_dirs)


def pooled_differences(settings: list[list[str | Path]]) -> tuple[pd.DataFrame, list[str]]:
    """(every cross-folder paired difference of every setting, with a ``setting`` column; the variants in
    order of first appearance). Each setting is a list of >= 2 folders compared as :func:`compare_folders`
    does; settings must have distinct labels."""
    if len(settings) < 2:
        raise ReportError("pooling needs at least two settings (--setting DIR DIR [...] each)")
    labels = [setting_label([Path(d) for d in dirs]) for dirs in settings]
    if len(set(labels)) < len(labels):
        raise ReportError(f"two settings have the same folders: {labels}")
    parts, order = [], []
    for label, dirs in zip(labels, settings):
        if len(dirs) < 2:
            raise ReportError(f"setting {label!r}: compare needs at least two experiment folders")
        table, variants, units = variant_table([Path(d) for d in dirs])
        diffs = _cross_folder(paired_differences(table, [], units, variants), table, variants)
        parts.append(diffs.assign(setting=label))
        order += [v for v in variants if v not in order]
    found = [part for part in parts if not part.empty]  # concat of empty frames: a pandas warning, no rows
    diffs = pd.concat(found, ignore_index=True) if found else parts[0]
    # A pair is oriented by the order of its variants in its own setting; turn it as in the first setting
    # that has it, so that (a, b) of one setting and (b, a) of another pool as one pair.
    first: dict[frozenset, tuple[str, str]] = {}
    for baseline, method in zip(diffs["baseline"], diffs["method"]):
        first.setdefault(frozenset((baseline, method)), (baseline, method))
    flip = [first[frozenset((b, m))] != (b, m) for b, m in zip(diffs["baseline"], diffs["method"])]
    if any(flip):
        flip = pd.Series(flip, index=diffs.index)
        diffs.loc[flip, ["method", "baseline"]] = diffs.loc[flip, ["baseline", "method"]].to_numpy()
        diffs.loc[flip, "diff"] = -diffs.loc[flip, "diff"]
    return diffs, order


def pool_settings(settings: list[list[str | Path]]) -> str:
    """The Markdown of :func:`pooled_differences`: per variant pair and protocol, the differences of all
    settings in one paired t interval; then, under model.pt, one row per setting and one per seed."""
    diffs, order = pooled_differences(settings)
    rank = {v: i for i, v in enumerate(order)}
    stats_header = ["n pairs", "mean difference", "95% CI", "wins / ties / losses"]
    lines = ["# Pooled comparison of settings", "",
             *markdown_table(["setting", "folders"], [[setting_label([Path(d) for d in dirs]),
                                                      ", ".join(f"`{d}`" for d in dirs)] for dirs in settings]),
             "", "Test accuracy of `method` minus `baseline` in percentage points, paired inside each setting on "
             "equal noise kind, rate and units (seed, fold, split seed) and pooled over the settings into one "
             "paired t interval; wins / ties / losses of `method`. Folds of one split share training images, "
             "so the intervals are narrower than the truth.", ""]
    if diffs.empty:
        return "\n".join([*lines, "(no pairs: no variant pair has finished runs on the same units)", ""])
    diffs = diffs.assign(_rank=[(rank[b], rank[m]) for b, m in zip(diffs["baseline"], diffs["method"])])
    diffs = diffs.sort_values("_rank", kind="stable")
    pooled = aggregate_differences(diffs, ["method", "baseline", "protocol"])
    counts = diffs.groupby(["method", "baseline", "protocol"])["setting"].nunique()
    rows = [[r["method"], r["baseline"], r["protocol"], str(counts[(r["method"], r["baseline"], r["protocol"])]),
             *paired_stat_cells(r)] for _, r in pooled.iterrows()]
    lines += ["## Pooled over the settings", "",
              *markdown_table(["method", "baseline", "protocol", "settings", *stats_header], rows), ""]
    model_pt = diffs[diffs["protocol"] == MODEL_PT]
    per_setting = aggregate_differences(model_pt, ["method", "baseline", "setting", "noise_kind", "noise_rate"])
    rows = [[r["method"], r["baseline"], r["setting"], noise_label(r),
             *paired_stat_cells(r)] for _, r in per_setting.iterrows()]
    lines += [f"## Per setting ({MODEL_PT})", "",
              *markdown_table(["method", "baseline", "setting", "noise", *stats_header], rows), ""]
    if "seed" in model_pt and model_pt["seed"].nunique() > 1:
        per_seed = aggregate_differences(model_pt.sort_values(["_rank", "seed"], kind="stable"),
                                         ["method", "baseline", "seed"])
        rows = [[r["method"], r["baseline"], str(int(r["seed"])), *paired_stat_cells(r)]
                for _, r in per_seed.iterrows()]
        lines += [f"## Per seed, all settings ({MODEL_PT})", "",
                  *markdown_table(["method", "baseline", "seed", *stats_header], rows), ""]
    return "\n".join(lines).rstrip() + "\n"
