"""Experiment statistics and the report: grid files with folds / split_seeds (validation, cells), and an
experiment folder made of REAL short runs (in-memory digits, single process, no Ray) written into
DIR/cells/<name>/ with the runner's naming, summarised into cells.csv / summary.csv / paired.csv and
report.md, whose numbers must match the tables."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from soft_dist.experiment.grid import AXIS_KEYS, GridError, check_overrides, load_grid
from soft_dist.experiment.summary import REPORTED_PROTOCOLS, paired, summarise, t_interval

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T_975_DF1 = 12.706204736174707  # Student t quantile 0.975 with 1 degree of freedom (tables)
T_975_DF3 = 3.182446305284263
HEAD = "base: BASE\nmethods: [ce]\nnoise_kinds: [symmetric]\nnoise_rates: [0.3]\nseeds: [0]\n"


def write_grid(folder: Path, body: str, name: str = "grid.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body).replace("BASE", str(CONFIGS / "digits_cpu.yaml")))
    return path


# ----------------------------------------------------------------------------- grid files (fast)


@pytest.mark.parametrize("body, field, message", [
    (HEAD + "folds: 1\n", "folds", r"integer K in \[2, 1000\]"),
    (HEAD + "folds: [2, 3]\n", "folds", "integer K"),
    (HEAD + "folds: true\n", "folds", "integer K"),
    (HEAD + "folds: 5\nsplit_seeds: 3\n", "split_seeds", "non-empty list"),
    (HEAD + "folds: 5\nsplit_seeds: [0, 0]\n", "split_seeds", "repeated"),
    (HEAD + "folds: 5\nsplit_seeds: [-1]\n", "split_seeds", "negative"),
    (HEAD + "split_seeds: [0, 1]\n", "split_seeds", "only changes a run that carves"),
    (HEAD + "overrides: [data.fold=1]\n", "overrides", "is a grid axis"),
    (HEAD + "overrides: [data.folds=5]\n", "overrides", "is a grid axis"),
    (HEAD + "extra: {data.split_seed: [1, 2]}\n", "extra.data.split_seed", "folds/split_seeds"),
])
def test_bad_split_axes_name_the_field_and_the_file(tmp_path, body, field, message):
    with pytest.raises(GridError, match=f"grid field '{field}'.*{message}") as info:
        load_grid(write_grid(tmp_path, body))
    assert str(tmp_path / "grid.yaml") in str(info.value)


def test_split_axes_cannot_be_collapsed_from_the_command_line():
    for key in ("data.folds", "data.fold", "data.split_seed"):
        assert key in AXIS_KEYS
        with pytest.raises(GridError, match="grid field 'command line'.*grid axis"):
            check_overrides([f"{key}=3"], "command line", None, AXIS_KEYS)


def test_folds_and_split_seeds_make_cells(tmp_path):
    from soft_dist.experiment.runner import cell_config

    grid = load_grid(write_grid(tmp_path, HEAD.replace("[ce]", "[ce, soft]") + "folds: 3\nsplit_seeds: [0, 4]\n"))
    cells = grid.cells()
    assert len(cells) == 2 * 2 * 3 and len({c.name for c in cells}) == len(cells)
    assert [c.name for c in cells[:4]] == ["ce-symmetric-0.3-s0-fold0-split0", "ce-symmetric-0.3-s0-fold1-split0",
                                           "ce-symmetric-0.3-s0-fold2-split0", "ce-symmetric-0.3-s0-fold0-split4"]
    assert grid.unit_keys == ["seed", "fold", "split_seed"]
    assert cells[1].row() == {"cell": cells[1].name, "method": "ce", "noise_kind": "symmetric", "noise_rate": 0.3,
                              "seed": 0, "fold": 1, "split_seed": 0}
    cfg = cell_config(grid, cells[5], ["data.shards=/nowhere"], None)
    assert (cfg.data.folds, cfg.data.fold, cfg.data.split_seed) == (3, 2, 4)
    # Without the new axes names and rows are what they were (finished cells of old folders are found).
    plain = load_grid(write_grid(tmp_path, HEAD, "plain.yaml"))
    assert plain.cells()[0].name == "ce-symmetric-0.3-s0" and plain.unit_keys == ["seed"]
    assert "fold" not in plain.cells()[0].row() and not any(o.startswith("data.") for o in plain.cells()[0].overrides())
    # split seeds alone are fine when the base config (here: the grid's overrides) carves validation
    carved = load_grid(write_grid(tmp_path, HEAD + "overrides: [data.val_fraction=0.2]\nsplit_seeds: [1, 2]\n",
                                  "carved.yaml"))
    assert [c.name for c in carved.cells()] == ["ce-symmetric-0.3-s0-split1", "ce-symmetric-0.3-s0-split2"]
    assert carved.unit_keys == ["seed", "split_seed"]


# ----------------------------------------------------------------------------- statistics (fast)


def test_t_interval_matches_the_t_table():
    stats = t_interval([0.80, 0.84])
    std = np.std([0.80, 0.84], ddof=1)
    assert stats["n"] == 2 and stats["std"] == pytest.approx(std)
    assert stats["ci_high"] - stats["ci_low"] == pytest.approx(2 * T_975_DF1 * std / math.sqrt(2))
    four = [0.1, 0.2, 0.4, 0.3]
    s4 = t_interval(four)
    assert s4["ci_high"] - s4["mean"] == pytest.approx(T_975_DF3 * np.std(four, ddof=1) / 2)
    one = t_interval([0.5, float("nan"), None])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    # Clipped to the possible range: a wide accuracy interval near 100% stops at 100%.
    near_top = t_interval([0.99, 0.90, 0.98], bounds=(0.0, 1.0))
    unclipped = t_interval([0.99, 0.90, 0.98])
    assert unclipped["ci_high"] > 1.0 and near_top["ci_high"] == 1.0
    assert near_top["ci_low"] == pytest.approx(unclipped["ci_low"])


def test_pairs_need_the_same_units_and_count_wins_ties_losses():
    rows = []
    for method, accs in {"ce": [0.70, 0.80, 0.75, 0.60], "soft": [0.72, 0.80, 0.74, 0.99]}.items():
        for seed, acc in enumerate(accs):
            if method == "soft" and seed == 3:
                seed = 9  # no ce run with seed 9: not a pair
            row = {"method": method, "noise_kind": "symmetric", "noise_rate": 0.3, "seed": seed}
            for p in ("val_selected", "last", "mean_last_5", "best_on_test"):
                row[f"{p}_accuracy"] = acc
                row[f"{p}_mean_class_accuracy"] = acc
            row.update(accuracy=acc, mean_class_accuracy=acc)
            rows.append(row)
    table = pd.DataFrame(rows)
    pairs = paired(table, [], ["seed"], ["ce", "soft"])
    row = pairs[pairs["protocol"] == "val_selected"].iloc[0]
    assert (row["method"], row["baseline"], row["n_pairs"]) == ("soft", "ce", 3)
    assert row["accuracy_diff_mean"] == pytest.approx(np.mean([0.02, 0.0, -0.01]))
    assert (row["wins"], row["ties"], row["losses"]) == (1, 1, 1)
    summary = summarise(table, [], ["soft", "ce"])
    assert list(summary["method"]) == ["soft", "ce"]  # the grid's order
    assert list(summary.columns[:8]) == ["method", "noise_kind", "noise_rate", "accuracy_mean", "accuracy_std",
                                         "mean_class_accuracy_mean", "mean_class_accuracy_std", "seeds"]


# ----------------------------------------------------------------------------- real runs -> report

# keep_state=false: only model.pt stays, not 4 x ~190 MB of resumable state the report never reads
RUN = ["data.image_size=16", "model.width=16", "train.epochs=2", "train.batch_size=128", "method.rampup_epochs=1",
       "train.keep_state=false"]
GRID = """
    description: report fixture (CE vs MT, digits 16 px, 2 epochs)
    base: BASE
    methods: [ce, mt]
    noise_kinds: [symmetric]
    noise_rates: [0.3]
    seeds: [0, 1]
    sls_bars: false
"""
LEGACY = "ce-symmetric-0.3-s1"  # its results.json loses "protocols", as if trained before they existed


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """DIR with 4 real finished cells (CE and MT x seeds 0, 1) in the runner's layout; the grid file
    lives outside DIR, as it does for users."""
    from soft_dist.data.memory_loaders import digits_memory_loaders
    from soft_dist.experiment.runner import GridOutcome, cell_config, cell_dir, write_tables_plots_report
    from soft_dist.noise.table import build_noise_table
    from soft_dist.train.local import fit_local

    root = tmp_path_factory.mktemp("report")
    grid = load_grid(write_grid(root, GRID))
    run_dir = root / "exp"
    original = {}
    threads = torch.get_num_threads()
    # One intra-op thread: on a 2-core machine shared with other jobs, torch's default 2 threads spin
    # against them and a 12 s run takes minutes.
    torch.set_num_threads(1)
    try:
        for cell in grid.cells():
            cfg = cell_config(grid, cell, RUN, None)
            loaders, num_classes, splits = digits_memory_loaders(cfg)
            table = build_noise_table(splits, num_classes, cell.noise_kind, cell.noise_rate, seed=cell.seed)
            original[cell.name] = fit_local(cfg, loaders, num_classes, table, cell_dir(run_dir, cell),
                                             progress=False, verbose=False)
    finally:
        torch.set_num_threads(threads)
    legacy = cell_dir(run_dir, next(c for c in grid.cells() if c.name == LEGACY)) / "results.json"
    legacy.write_text(json.dumps({k: v for k, v in original[LEGACY].items() if k != "protocols"}))
    outcome = GridOutcome(trained=sorted(original))
    command = f"soft-dist experiment --grid {grid.path} --run-dir {run_dir} data.image_size=16 model.width=16"
    write_tables_plots_report(grid, run_dir, outcome, log=lambda _: None, command=command)
    assert outcome.failed == []
    return {"grid": grid, "dir": run_dir, "results": original, "command": command}


def _pm(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{100 * values.mean():.2f} ± {100 * values.std(ddof=1):.2f}"


@pytest.mark.slow
def test_cells_csv_has_every_protocol(experiment):
    cells = pd.read_csv(experiment["dir"] / "cells.csv")
    assert sorted(cells["cell"]) == sorted(experiment["results"])
    for _, row in cells.iterrows():
        results = experiment["results"][row["cell"]]
        p = results["protocols"]
        protocol = results["model"]["protocol"]  # model.pt's: last for a method with a teacher, else val_selected
        assert protocol == ("val_selected" if row["method"] == "ce" else "last")
        assert row[f"{protocol}_accuracy"] == pytest.approx(results["model"]["test"]["accuracy"], abs=1e-12)
        # model_pt: model.pt's own numbers and the protocol it followed, whichever that is per method
        assert row["model_pt_protocol"] == protocol
        assert row["model_pt_accuracy"] == pytest.approx(row[f"{protocol}_accuracy"], abs=1e-12)
        assert row["model_pt_mean_class_accuracy"] == pytest.approx(results["model"]["test"]["mean_class_accuracy"])
        assert (row["model_pt_epoch"], row["model_pt_branch"]) == (results["model"]["epoch"], results["model"]["branch"])
        assert (row[f"{protocol}_epoch"], row[f"{protocol}_branch"]) == (results["model"]["epoch"],
                                                                          results["model"]["branch"])
        assert row["val_selected_val_samples"] == 179
        assert row["last_accuracy"] == pytest.approx(row["accuracy"], abs=1e-12)  # legacy column = last
        assert row["mean_last_5_num_epochs"] == 2
        assert row["best_on_test_accuracy"] == pytest.approx(p["best_on_test"]["accuracy"], abs=1e-12)
        assert row["best_on_test_accuracy"] >= row["val_selected_accuracy"]
        if row["method"] == "ce":
            assert row["val_selected_branch"] == "student" and pd.isna(row["val_selected_val_margin_samples"])
        else:
            val = results["model"]["val"]
            assert abs(row["val_selected_val_margin_samples"]) <= val["num_samples"]
        # the cell trained "before protocols existed" gets the same numbers from its metrics.jsonl
        assert row["protocols_from"] == ("metrics.jsonl" if row["cell"] == LEGACY else "results.json")


@pytest.mark.slow
def test_summary_and_paired_tables(experiment):
    cells = pd.read_csv(experiment["dir"] / "cells.csv")
    summary = pd.read_csv(experiment["dir"] / "summary.csv")
    assert list(summary["method"]) == ["ce", "mt"] and list(summary["n"]) == [2, 2] == list(summary["seeds"])
    for _, row in summary.iterrows():
        mine = cells[cells["method"] == row["method"]]
        for p in ("model_pt", "val_selected", "last", "mean_last_5", "best_on_test"):
            values = mine[f"{p}_accuracy"].to_numpy()
            std = values.std(ddof=1)
            assert row[f"{p}_accuracy_mean"] == pytest.approx(values.mean(), abs=1e-4)  # csv keeps 4 decimals
            assert row[f"{p}_accuracy_std"] == pytest.approx(std, abs=1e-4)
            half = T_975_DF1 * std / math.sqrt(2)  # clipped to the range an accuracy can take
            assert row[f"{p}_accuracy_ci_low"] == pytest.approx(max(values.mean() - half, 0.0), abs=2e-4)
            assert row[f"{p}_accuracy_ci_high"] == pytest.approx(min(values.mean() + half, 1.0), abs=2e-4)
        assert row["accuracy_mean"] == pytest.approx(mine["accuracy"].mean(), abs=1e-4)

    pairs = pd.read_csv(experiment["dir"] / "paired.csv")
    assert sorted(pairs["protocol"]) == sorted(["model_pt", "val_selected", "last", "mean_last_5", "best_on_test"])
    assert set(pairs["method"]) == {"mt"} and set(pairs["baseline"]) == {"ce"} and set(pairs["n_pairs"]) == {2}
    for _, row in pairs.iterrows():
        by_seed = cells.set_index(["method", "seed"])[f"{row['protocol']}_accuracy"]
        diffs = [by_seed[("mt", s)] - by_seed[("ce", s)] for s in (0, 1)]
        assert row["accuracy_diff_mean"] == pytest.approx(np.mean(diffs), abs=1e-4)
        assert row["wins"] + row["ties"] + row["losses"] == 2
        assert row["wins"] == sum(d > 1e-9 for d in diffs)
    on_disk = json.loads((experiment["dir"] / "summary.json").read_text())
    assert on_disk["unit_keys"] == ["seed"] and len(on_disk["paired"]) == 5 and set(on_disk["protocols"]) == {
        "model_pt", "val_selected", "last", "mean_last_5", "best_on_test"}


@pytest.mark.slow
def test_report_numbers_match_cells_csv(experiment):
    run_dir = experiment["dir"]
    report = (run_dir / "report.md").read_text()
    cells = pd.read_csv(run_dir / "cells.csv")
    assert experiment["command"] in report and "(copy: [grid.yaml](grid.yaml))" in report
    assert "4 finished of 4 cells; 0 failed" in report and "CPUs" in report
    for method in ("ce", "mt"):
        mine = cells[cells["method"] == method]
        for p in ("model_pt", "val_selected", "last", "mean_last_5", "best_on_test"):
            section = report.split(f"## {p}")[1].split("\n## ")[0]
            line = next(x for x in section.splitlines() if x.startswith(f"| {method} |"))
            assert line.startswith(f"| {method} | symmetric 30% | 2 | {_pm(mine[f'{p}_accuracy'])} | ")
            assert f"| {_pm(mine[f'{p}_mean_class_accuracy'])} |" in line
    for _, row in cells.iterrows():
        line = next(x for x in report.splitlines() if x.startswith(f"| {row['cell']} |"))
        assert f"| {100 * row['val_selected_accuracy']:.2f} | epoch {row['val_selected_epoch']}, " \
               f"{row['val_selected_branch']}, " in line
    mt_pairs = [x for x in report.splitlines() if x.startswith("| mt | ce | symmetric 30% |")]
    assert len(mt_pairs) == 5 and all("| 2 |" in x for x in mt_pairs)
    assert "Protocol per method: ce: val_selected; mt: last." in report.split("## model_pt")[1].split("\n## ")[0]
    # the selection section: last - val_selected per run, and each protocol's regret against best_on_test
    selection = report.split("## Selection: the last epoch")[1].split("\n## ")[0]
    for method in ("ce", "mt"):
        mine = cells[cells["method"] == method]
        diff = 100 * (mine["last_accuracy"] - mine["val_selected_accuracy"])
        regret = 100 * (mine["best_on_test_accuracy"] - mine["val_selected_accuracy"])
        line = next(x for x in selection.splitlines() if x.startswith(f"| {method} |"))
        assert line.startswith(f"| {method} | symmetric 30% | 2 | {diff.mean():+.2f} | ")
        assert f"| {regret.mean():.2f} ({regret.max():.2f}) |" in line
    branch = next(x for x in report.split("## Branch chosen")[1].splitlines() if x.startswith("| mt |"))
    teacher, student = (int(v) for v in branch.split("|")[3:5])
    assert teacher + student == 2
    assert "OPTIMISTIC" in report
    for name in ("accuracy_vs_noise_rate_symmetric.png", "test_accuracy_per_epoch_symmetric_0.3.png"):
        assert (run_dir / "plots" / name).read_bytes()[:8] == PNG_MAGIC
        assert f"(plots/{name})" in report


@pytest.mark.slow
def test_report_per_epoch_section_is_the_mean_of_the_runs_records(experiment):
    """Each method's row at each epoch is the mean over its runs' metrics.jsonl; CE has no teacher columns."""
    run_dir = experiment["dir"]
    section = (run_dir / "report.md").read_text().split("## Per epoch")[1].split("\n## ")[0]
    assert "### symmetric 30%" in section
    for method in ("ce", "mt"):
        records = [[json.loads(x) for x in (run_dir / "cells" / f"{method}-symmetric-0.3-s{s}" / "metrics.jsonl")
                    .read_text().splitlines()] for s in (0, 1)]
        for epoch in (1, 2):
            line = next(x for x in section.splitlines() if x.startswith(f"| {epoch} | {method} |"))
            cells = [v.strip() for v in line.strip("|").split("|")]
            at = [r[epoch - 1] for r in records]
            assert all(r["epoch"] == epoch for r in at) and cells[2] == "2"
            assert cells[3] == f"{100 * np.mean([r['test']['student']['accuracy'] for r in at]):.2f}"
            assert cells[5] == f"{100 * np.mean([r['val']['student']['accuracy'] for r in at]):.2f}"
            if method == "ce":
                assert cells[4] == "—" and cells[6:] == ["—"] * 4
            else:
                assert cells[4] == f"{100 * np.mean([r['test']['teacher']['accuracy'] for r in at]):.2f}"
                assert cells[6] == f"{100 * np.mean([r['val']['teacher']['accuracy'] for r in at]):.2f}"
                assert cells[7] == f"{100 * np.mean([r['train']['teacher_agrees'] for r in at]):.2f}"
                assert cells[8] == "—"  # MT has no SLS targets
                assert cells[9] == f"{np.mean([r['train']['loss_cons'] for r in at]):.3f}"
    # epoch by epoch: both methods' rows of epoch 1 come before any row of epoch 2
    epochs = [int(x.split("|")[1]) for x in section.splitlines() if x.startswith("| ") and x[2].isdigit()]
    assert epochs == [1, 1, 2, 2]


def test_epoch_means_average_what_each_run_recorded(tmp_path):
    """Runs of different lengths and a value only some runs have: each epoch's mean is over the runs
    that recorded it, and ``runs`` counts the runs that reached the epoch."""
    from soft_dist.experiment.dynamics import epoch_means

    def run(name: str, records: list[dict]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return folder

    a = run("a", [{"epoch": 1, "train": {"share_k_gt_1": 0.9}, "test": {"student": {"accuracy": 0.5}}},
                  {"epoch": 2, "train": {"share_k_gt_1": 0.7}, "test": {"student": {"accuracy": 0.7}}}])
    b = run("b", [{"epoch": 1, "train": {}, "test": {"student": {"accuracy": 0.3}}}])
    table = epoch_means([a, b, tmp_path / "no-records"]).set_index("epoch")
    assert list(table["runs"]) == [2, 1]
    assert table.loc[1, "test student %"] == pytest.approx(0.4) and table.loc[2, "test student %"] == 0.7
    assert table.loc[1, "k > 1 share"] == 0.9  # only run a recorded it
    assert table["test teacher %"].isna().all()
    assert epoch_means([tmp_path / "no-records"]).empty


@pytest.mark.slow
def test_report_command_works_from_the_folder_alone(experiment, tmp_path, capsys):
    """Copied elsewhere and with the grid file gone, `soft-dist experiment report DIR --out F` gives the
    same tables (it reads DIR/grid.yaml)."""
    from soft_dist.cli import main

    moved = tmp_path / "moved"
    shutil.copytree(experiment["dir"], moved)
    grid_file = tmp_path / "grid-gone.yaml"
    assert not grid_file.exists()
    for stale in ("cells.csv", "summary.csv", "paired.csv", "report.md"):
        (moved / stale).unlink()  # the command rewrites them from the cell folders
    out = tmp_path / "elsewhere" / "r.md"
    assert main(["experiment", "report", str(moved), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    again, first = out.read_text(), (experiment["dir"] / "report.md").read_text()

    def tables(text: str) -> str:
        return text.split("## val_selected")[1].split("## Plots")[0]

    assert tables(again) == tables(first)
    # links are relative to where the report is
    assert "(../moved/plots/test_accuracy_per_epoch_symmetric_0.3.png)" in again
    assert "(copy: [grid.yaml](../moved/grid.yaml))" in again
    assert pd.read_csv(moved / "cells.csv").equals(pd.read_csv(experiment["dir"] / "cells.csv"))
    assert main(["experiment", "report", str(moved)]) == 0 and (moved / "report.md").is_file()


def test_report_command_errors(tmp_path, capsys):
    from soft_dist.cli import main

    assert main(["experiment", "report", str(tmp_path)]) == 2
    assert "no grid.yaml" in capsys.readouterr().err
    grid = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "digits_long.yaml"
    assert main(["experiment", "--grid", str(grid), "--run-dir", str(tmp_path / "none"), "--summary-only"]) == 2
    assert "holds no cells/ folder" in capsys.readouterr().err
    for argv in (["experiment", "report"], ["experiment", "report", "a", "b"],
                 ["experiment", "--run-dir", str(tmp_path)], ["experiment", "report", "x", "--grid", "g.yaml"],
                 ["experiment", "--grid", "g", "--run-dir", "d", "--out", "r.md"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv


ABLATION = """
    description: ablation fixture (MT with one setting changed)
    base: BASE
    methods: [mt]
    noise_kinds: [symmetric]
    noise_rates: [0.3]
    seeds: [0, 1]
    extra:
      method.ema_decay: [0.95]
    sls_bars: false
"""


def _ablation_of_copies(experiment, folder: Path) -> Path:
    """An ablation folder (ABLATION's grid) whose cells are copies of the experiment's MT runs."""
    from soft_dist.experiment.runner import GridOutcome, cell_dir, write_tables_plots_report

    folder.mkdir(parents=True)
    grid = load_grid(write_grid(folder, ABLATION.replace("BASE", str(experiment["grid"].base)), name="ablation.yaml"))
    for cell in grid.cells():
        source = cell_dir(experiment["dir"], dataclasses.replace(cell, extra=()))
        shutil.copytree(source, cell_dir(folder, cell))
    write_tables_plots_report(grid, folder, GridOutcome(), log=lambda _: None, command="test")
    return folder


@pytest.mark.slow
def test_compare_pairs_an_ablation_folder_with_the_grid_it_varies(experiment, tmp_path, capsys):
    """`experiment compare A B` pairs B's runs with A's on the same seeds. B's cells here are copies of A's
    MT runs, so B vs MT ties on every run and B vs CE equals A's own MT - CE row."""
    from soft_dist.cli import main

    ablation = _ablation_of_copies(experiment, tmp_path / "ablation")
    out = tmp_path / "compare.md"
    assert main(["experiment", "compare", str(experiment["dir"]), str(ablation), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| mt ema_decay=0.95 | symmetric 30% | 2 |" in text
    rows = [line for line in text.splitlines() if line.startswith("| mt ema_decay=0.95 | ")]
    paired_rows = [r.split(" | ") for r in rows if "val_selected" in r or "last" in r]
    vs_mt = [r for r in paired_rows if r[1] == "mt"]
    assert vs_mt and all(r[-1].strip(" |") == "0 / 2 / 0" for r in vs_mt)  # copies: every run ties
    own = pd.read_csv(experiment["dir"] / "paired.csv")
    mt_ce = own[(own["method"] == "mt") & (own["baseline"] == "ce") & (own["protocol"] == "last")].iloc[0]
    vs_ce = next(r for r in paired_rows if r[1] == "ce" and r[3] == "last")
    assert vs_ce[5] == f"{100 * mt_ce['accuracy_diff_mean']:+.2f}"
    assert not any(line.startswith("| mt | ce |") for line in text.splitlines())  # A's own pairs stay in A
    with pytest.raises(SystemExit):
        main(["experiment", "compare", str(experiment["dir"])])
    assert main(["experiment", "compare", str(tmp_path / "none-1"), str(tmp_path / "none-2")]) == 2
    assert "error" in capsys.readouterr().err


def test_archive_keeps_what_report_and_compare_read_and_merges(experiment, tmp_path, capsys):
    """`experiment archive DIR --out DEST`: DEST holds grid.yaml, outcome.json and each finished cell's
    results.json / metrics.jsonl / config.yaml, no weights and no path of DIR's machine; report and compare
    read DEST as they read DIR; archiving again adds only the cells DEST lacks; another grid is refused."""
    from soft_dist.cli import main
    from soft_dist.config import load_config
    from soft_dist.experiment.archive import ArchiveError, archive_run
    from soft_dist.experiment.compare import compare_folders
    from soft_dist.experiment.grid import SlsBars
    from soft_dist.experiment.grid_plots import write_plots

    source, names = experiment["dir"], sorted(experiment["results"])
    kept = tmp_path / "kept"
    outcome = archive_run(source, kept, root=source.parent)
    assert outcome.copied == names and outcome.kept == [] and outcome.unfinished == []
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    records = ("results.json", "metrics.jsonl", "config.yaml")
    assert files == sorted(["grid.yaml", "outcome.json", *(f"cells/{n}/{r}" for n in names for r in records)])
    for name in names:  # results and metrics byte for byte; the config names the same run
        for record in ("results.json", "metrics.jsonl"):
            assert (kept / "cells" / name / record).read_bytes() == (source / "cells" / name / record).read_bytes()
        copy, original = (load_config(folder / "cells" / name / "config.yaml") for folder in (kept, source))
        assert copy.method == original.method and copy.train == original.train and copy.noise == original.noise
        assert str(source.parent) not in (kept / "cells" / name / "config.yaml").read_text()
    command = json.loads((kept / "outcome.json").read_text())["command"]
    assert command.startswith("soft-dist experiment --grid grid.yaml --run-dir exp ") and str(source) not in command
    # the grid copy names its base config by absolute path: relative to the folder the command runs in
    from_repo = archive_run(source, tmp_path / "from-repo", root=CONFIGS.parent)
    assert from_repo.copied == names
    assert "base: configs/digits_cpu.yaml\n" in (tmp_path / "from-repo" / "grid.yaml").read_text()
    assert str(CONFIGS) in (source / "grid.yaml").read_text()

    # report and compare: the same tables from the records alone (the legacy cell's protocols come from
    # its metrics.jsonl)
    assert main(["experiment", "report", str(kept)]) == 0
    assert pd.read_csv(kept / "cells.csv").equals(pd.read_csv(source / "cells.csv"))
    ablation = _ablation_of_copies(experiment, tmp_path / "ablation")
    assert (compare_folders([kept, ablation]).replace(str(kept), "DIR")
            == compare_folders([source, ablation]).replace(str(source), "DIR"))
    # a grid with SLS bars skips the archived cells (no checkpoint to draw from) instead of failing
    plots = write_plots(dataclasses.replace(experiment["grid"], sls_bars=SlsBars(method="mt", images=2)),
                        experiment["grid"].cells(), kept, log=lambda _: None)
    assert not any(name.startswith("sls_targets") for name in plots)

    # merging: a cell DEST lacks is added, the others are left as they were
    untouched = kept / "cells" / names[0] / "results.json"
    stamp = untouched.stat().st_mtime_ns
    shutil.rmtree(kept / "cells" / LEGACY)
    again = archive_run(source, kept, root=source.parent)
    assert again.copied == [LEGACY] and again.kept == [n for n in names if n != LEGACY]
    assert untouched.stat().st_mtime_ns == stamp

    # the same grid with another comment merges, and DEST keeps the newer text
    original = (source / "grid.yaml").read_text()
    (source / "grid.yaml").write_text(original + "# a corrected header\n")
    try:
        assert archive_run(source, kept, root=source.parent).copied == []
    finally:
        (source / "grid.yaml").write_text(original)  # the fixture's folder is shared with other tests
    assert (kept / "grid.yaml").read_text().endswith("# a corrected header\n")

    # another grid's folder, a folder that is no experiment, a missing --out
    other = tmp_path / "other"
    other.mkdir()
    (other / "grid.yaml").write_text((source / "grid.yaml").read_text().replace("seeds: [0, 1]", "seeds: [0]"))
    with pytest.raises(ArchiveError, match="is another grid"):
        archive_run(source, other)
    assert main(["experiment", "archive", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "holds no grid.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["experiment", "archive", str(source)])


def _rows(text: str, prefix: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith(prefix)]


@pytest.mark.slow
def test_compare_pools_settings_and_orients_their_pairs_alike(experiment, tmp_path, capsys):
    """`compare --setting A B --setting C D`: pairs inside each setting, never across, then pools. The second
    setting is a copy of the first with its folders named in the other order, so its pair (ablation, CE)
    comes out reversed until pooling turns it round: pooled, every pair counts twice with the same mean."""
    from soft_dist.cli import main
    from soft_dist.experiment.summary import paired_differences

    first = [experiment["dir"], _ablation_of_copies(experiment, tmp_path / "ablation")]
    second = [tmp_path / "copy" / "ablation", tmp_path / "copy" / "exp"]
    shutil.copytree(first[1], second[0])
    shutil.copytree(first[0], second[1])
    out = tmp_path / "pooled.md"
    assert main(["experiment", "compare", "--setting", *map(str, first), "--setting", *map(str, second),
                 "--out", str(out)]) == 0
    text = out.read_text()

    own = pd.read_csv(experiment["dir"] / "cells.csv")
    diffs = paired_differences(own, [], ["seed"], ["ce", "mt"])
    for protocol in ("model_pt", "last", "val_selected"):
        mt_ce = diffs[(diffs["method"] == "mt") & (diffs["protocol"] == protocol)]["diff"].to_numpy()
        stats = t_interval(np.concatenate([mt_ce, mt_ce]), bounds=(-1.0, 1.0))
        [row] = [r for r in _rows(text, "| mt ema_decay=0.95 | ce | ") if r[2] == protocol]
        wins, ties, losses = (int((mt_ce > 1e-9).sum()), int((abs(mt_ce) <= 1e-9).sum()), int((mt_ce < -1e-9).sum()))
        assert row[3:] == ["2", str(2 * len(mt_ce)), f"{100 * stats['mean']:+.2f}",
                           f"{100 * stats['ci_low']:+.2f} to {100 * stats['ci_high']:+.2f}",
                           f"{2 * wins} / {2 * ties} / {2 * losses}"], row
    # model.pt per setting: both settings, the same orientation and numbers; the copies tie with MT
    labels = ["exp + ablation", "ablation + exp"]
    per_setting = [r for r in _rows(text, "| mt ema_decay=0.95 | ce | ") if r[2] in labels]
    assert [r[2] for r in per_setting] == labels and per_setting[0][4:] == per_setting[1][4:]
    assert all(r[-1] == "0 / 4 / 0" for r in _rows(text, "| mt ema_decay=0.95 | mt | ") if r[2] in REPORTED_PROTOCOLS)
    assert not _rows(text, "| ce | mt ema_decay=0.95 |")  # turned round, never listed the other way
    assert not _rows(text, "| mt | ce |")  # pairs inside one folder stay in its own report
    assert [r[2] for r in _rows(text, "| mt ema_decay=0.95 | ce | ") if r[2] in ("0", "1")] == ["0", "1"]  # per seed

    assert main(["experiment", "compare", "--setting", *map(str, first)]) == 2  # one setting: nothing to pool
    assert "at least two settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["experiment", "compare", str(first[0]), "--setting", *map(str, second)])


def test_sls_k_share_columns_take_the_first_and_last_sls_epoch():
    from soft_dist.experiment.summary import sls_k_columns

    records = [{"epoch": 2, "train": {"share_k_gt_1": 0.3}}, {"epoch": 0, "train": {"loss": 1.0}},
               {"epoch": 1, "train": {"share_k_gt_1": 0.8}}]
    assert sls_k_columns(records) == {"share_k_gt_1_first": 0.8, "share_k_gt_1_last": 0.3}
    assert sls_k_columns([{"epoch": 0, "train": {"loss": 1.0}}]) == {"share_k_gt_1_first": None,
                                                                    "share_k_gt_1_last": None}
