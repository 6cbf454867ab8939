"""`soft-dist experiment` on a tiny digits grid with a real local Ray cluster: tables, plots, rerun
skipping finished cells, a failing cell listed while the others finish, asymmetric noise from a plain
model's confusion matrix; and grid-file validation (no Ray)."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from soft_dist.experiment.grid import GridError, load_grid

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# 16 px, 1 worker with 1 thread, 1 epoch: seconds per cell on 2 cores (plus Ray Train start-up).
TINY = ["data.image_size=16", "model.width=16", "train.epochs=1", "method.stage1_epochs=0", "method.rampup_epochs=1",
        "train.workers=1", "train.cpus_per_worker=1", "train.torch_threads=1", "train.sync_check_every=0",
        "data.augment.rotate_degrees=0"]


def write_grid(folder: Path, body: str, name: str = "grid.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body).replace("BASE", str(CONFIGS / "digits_cpu.yaml")))
    return path


# ----------------------------------------------------------------------------- validation (fast)


@pytest.mark.parametrize(
    "body, field",
    [
        ("methods: [ce]\nnoise_kinds: [symmetric]\nnoise_rates: [0.3]\nseeds: [0]\n", "base"),
        ("base: BASE\nnoise_kinds: [symmetric]\nnoise_rates: [0.3]\nseeds: [0]\n", "methods"),
        ("base: BASE\nmethods: [ce, nope]\nnoise_kinds: [symmetric]\nnoise_rates: [0.3]\nseeds: [0]\n", "methods"),
        ("base: BASE\nmethods: [ce]\nnoise_kinds: [pairwise]\nnoise_rates: [0.3]\nseeds: [0]\n", "noise_kinds"),
        ("base: BASE\nmethods: [ce]\nnoise_kinds: [symmetric]\nnoise_rates: [1.2]\nseeds: [0]\n", "noise_rates"),
        ("base: BASE\nmethods: [ce]\nnoise_kinds: [symmetric]\nnoise_rates: [0.3]\nseeds: 0\n", "seeds"),
        ("base: BASE\nmethods: [ce]\nnoise_kinds: [symmetric]\nnoise_rates: [0.3]\nseeds: [0]\nrates: [1]\n", "rates"),
        ("base: BASE\nmethods: [ce]\nnoise_kinds: [symmetric]\nnoise_rates: [0.3]\nseeds: [0]\n"
         "extra: {method.epsilonn: [0.1]}\n", "extra.method.epsilonn"),
        ("base: BASE\nmethods: [ce]\nnoise_kinds: [symmetric]\nnoise_rates: [0.3]\nseeds: [0]\n"
         "overrides: [train.seed=3]\n", "overrides"),
        ("base: BASE\nmethods: [ce]\nnoise_kinds: [symmetric]\nnoise_rates: [0.3]\nseeds: [0]\n"
         "asymmetric_from: magic\n", "asymmetric_from"),
        ("base: BASE\nmethods: [ce]\nnoise_kinds: [symmetric]\nnoise_rates: [0.3]\nseeds: [0]\n"
         "sls_bars: {method: ce}\n", "sls_bars.method"),
    ],
)
def test_bad_grid_files_name_the_field(tmp_path, body, field):
    with pytest.raises(GridError, match=f"grid field '{field}'") as info:
        load_grid(write_grid(tmp_path, body))
    assert str(tmp_path / "grid.yaml") in str(info.value)  # and the file


def test_grid_cells_and_names(tmp_path):
    grid = load_grid(write_grid(tmp_path, """
        base: BASE
        methods: [ce, soft]
        noise_kinds: [symmetric]
        noise_rates: [0.3, 0.5]
        seeds: [0, 1]
        extra: {method.epsilon: [0.1, 0.3]}
    """))
    cells = grid.cells()
    assert len(cells) == 2 * 2 * 2 * 2
    assert cells[0].name == "ce-symmetric-0.3-s0-epsilon0.1"
    assert {"train.seed=1", "noise.seed=1"} <= set(cells[1].overrides())  # a seed sets both
    assert "method.epsilon=0.1" in cells[0].overrides()
    assert len({c.name for c in cells}) == len(cells)
    for name in ("digits_cpu", "table1_rafdb", "table3_rafdb", "fig3_rafdb", "fig45_rafdb"):
        load_grid(CONFIGS / "experiments" / f"{name}.yaml")  # the shipped grid files are valid


def _shipped_grids_table() -> list[tuple[list[str], str]]:
    """[(grid file names, cells column)] of the "Shipped grids" table in docs/experiments.md."""
    lines = (CONFIGS.parent / "docs" / "experiments.md").read_text().splitlines()
    start = lines.index("Shipped grids:")
    rows = []
    for line in lines[start + 4:]:  # past the heading line, the blank line, the header and the rule
        if not line.startswith("|"):
            break
        first, *_, cells = [part.strip() for part in line.strip("|").split("|")]
        rows.append((re.findall(r"`([\w.]+\.yaml)`", first), cells))
    return rows


def test_the_docs_table_of_shipped_grids_lists_every_grid_with_its_cell_count():
    """A grid that gains seeds (or an axis) changes its row, so the docs say how many runs a command starts."""
    listed = {}
    for names, cells in _shipped_grids_table():
        counts = [cells.removesuffix(" each")] * len(names) if cells.endswith(" each") else cells.split(", ")
        assert len(counts) == len(names), (names, cells)
        listed.update(zip(names, counts))
    shipped = sorted(path.name for path in (CONFIGS / "experiments").glob("*.yaml"))
    assert sorted(listed) == shipped
    for name, count in listed.items():
        grid = load_grid(CONFIGS / "experiments" / name)
        # "+ 1": the plain CE run whose confusion matrix makes the asymmetric class map
        expected = f"{len(grid.cells())}" + (" + 1" if grid.asymmetric_from == "confusion" else "")
        assert count == expected, f"{name}: the docs say {count} cells, the grid has {expected}"


PARENT = """
    base: BASE
    overrides: [train.epochs=3, train.workers=1]
    methods: [ce, mt, soft]
    noise_kinds: [symmetric]
    noise_rates: [0.3]
    seeds: [0, 1]
    folds: 3
    extra: {method.epsilon: [0.1, 0.3]}
    sls_bars: false
"""


def test_a_grid_extends_another(tmp_path):
    # An ablation names only what it changes: overrides append (a later one of the same key wins), the
    # extra axes merge (null drops one), every other key replaces the parent's.
    (tmp_path / "sub").mkdir()
    write_grid(tmp_path, PARENT, "parent.yaml")
    child = load_grid(write_grid(tmp_path / "sub", """
        extends: ../parent.yaml
        overrides: [train.epochs=5]
        methods: [soft]
        seeds: [0]
        extra: {method.epsilon: null, method.tau_relative: [0.5]}
    """, "child.yaml"))
    assert child.base == CONFIGS / "digits_cpu.yaml"  # resolved against the file that names it
    assert child.overrides == ["train.epochs=3", "train.workers=1", "train.epochs=5"]
    assert child.extra == {"method.tau_relative": [0.5]} and child.folds == 3 and child.sls_bars is None
    assert [c.name for c in child.cells()] == [f"soft-symmetric-0.3-s0-fold{f}-tau_relative0.5" for f in range(3)]
    from soft_dist.config import load_config
    assert load_config(child.base, child.overrides).train.epochs == 5

    grandchild = load_grid(write_grid(tmp_path, "extends: sub/child.yaml\nextra: {method.epsilon: [0.2]}\n",
                                      "grandchild.yaml"))
    assert grandchild.extra == {"method.tau_relative": [0.5], "method.epsilon": [0.2]}
    assert grandchild.methods == ["soft"] and len(grandchild.overrides) == 3


def test_an_axis_replaces_the_override_of_its_key_it_inherits(tmp_path):
    # The parent fixes tau_relative for all its cells; an ablation that extends it varies tau_relative as an
    # axis, which drops the inherited override. Its own override of an axis key is still refused.
    write_grid(tmp_path, PARENT.replace("overrides: [", "overrides: [method.tau_relative=0.875, "), "parent.yaml")
    assert load_grid(tmp_path / "parent.yaml").overrides[0] == "method.tau_relative=0.875"
    child = load_grid(write_grid(tmp_path, "extends: parent.yaml\nextra: {method.tau_relative: [0.5]}\n", "child.yaml"))
    assert child.overrides == ["train.epochs=3", "train.workers=1"]
    assert all("method.tau_relative=0.5" in c.overrides() for c in child.cells())
    grandchild = load_grid(write_grid(tmp_path, "extends: child.yaml\n", "grandchild.yaml"))
    assert grandchild.overrides == child.overrides  # dropped for good down the chain
    with pytest.raises(GridError, match="'method.tau_relative' is a grid axis"):
        load_grid(write_grid(tmp_path, "extends: parent.yaml\noverrides: [method.tau_relative=0.7]\n"
                             "extra: {method.tau_relative: [0.5]}\n", "own.yaml"))


@pytest.mark.parametrize("body, message", [
    ("extends: missing.yaml\n", "grid field 'extends'.*file not found"),
    ("extends: [parent.yaml]\n", "grid field 'extends'.*expected the path of a grid file"),
    ("extends: grid.yaml\n", r"grid field 'extends'.*cycle: grid.yaml -> grid.yaml"),
    ("extends: parent.yaml\nmethods: [ce, nope]\n", r"grid field 'methods' \(in .*grid.yaml, extending parent.yaml\)"),
    ("extends: parent.yaml\nmethod: [ce]\n", "grid field 'method'.*unknown key"),
])
def test_bad_extends_names_the_field_and_the_files(tmp_path, body, message):
    write_grid(tmp_path, PARENT, "parent.yaml")
    with pytest.raises(GridError, match=message):
        load_grid(write_grid(tmp_path, body))


def test_the_copy_of_an_extending_grid_stands_alone(tmp_path):
    from soft_dist.experiment.runner import copy_grid

    write_grid(tmp_path, PARENT, "parent.yaml")
    child = load_grid(write_grid(tmp_path, "# run me with X\nextends: parent.yaml\nmethods: [soft]\n", "child.yaml"))
    (tmp_path / "run").mkdir()
    copy = copy_grid(child, tmp_path / "run")
    (tmp_path / "parent.yaml").unlink()  # a report made elsewhere has only DIR/grid.yaml
    again = load_grid(copy, check_base=False)
    assert [c.name for c in again.cells()] == [c.name for c in child.cells()]
    assert again.overrides == child.overrides and again.base == child.base and again.extra == child.extra
    header = copy.read_text().splitlines()[:3]  # its own comments, then where it came from
    assert header == ["# run me with X", f"# written out from {tmp_path / 'child.yaml'}",
                      f"# extending {tmp_path / 'parent.yaml'}"]


# ----------------------------------------------------------------------------- real runs (Ray)


@pytest.mark.ray
@pytest.mark.slow
def test_tiny_grid_tables_plots_rerun_and_failure(tmp_path, digit_shards, ray_cluster):
    from soft_dist.experiment.runner import run_grid

    # Each value of an axis is valid on its own (a value out of its field's range is refused when the grid
    # is read), but scale_min 0.95 above the grid's scale_max 0.9 fails the config's cross-check: those
    # cells fail when they are set up, the others finish.
    grid = load_grid(write_grid(tmp_path, """
        base: BASE
        methods: [ce, soft]
        noise_kinds: [symmetric]
        noise_rates: [0.3]
        seeds: [0]
        overrides: [data.augment.scale_max=0.9]
        extra: {data.augment.scale_min: [0.8, 0.95]}
        sls_bars: {method: soft, images: 4}
    """))
    run_dir = tmp_path / "exp"
    lines: list[str] = []
    outcome = run_grid(grid, run_dir, [f"data.shards={digit_shards}", *TINY], log=lines.append)
    # said once, before any cell trains, naming the cells; no FAILED line per cell after training others
    assert lines[0].startswith("[experiment] 2 of 4 cells cannot start (ce-symmetric-0.3-s0-scale_min0.95, "
                               "soft-symmetric-0.3-s0-scale_min0.95): ") and "data.augment.scale_min" in lines[0]
    assert not any("FAILED" in line for line in lines)
    assert sorted(outcome.trained) == ["ce-symmetric-0.3-s0-scale_min0.8", "soft-symmetric-0.3-s0-scale_min0.8"]
    assert sorted(f["cell"] for f in outcome.failed) == ["ce-symmetric-0.3-s0-scale_min0.95",
                                                         "soft-symmetric-0.3-s0-scale_min0.95"]
    assert all("data.augment.scale_min" in f["error"] for f in outcome.failed)

    summary = pd.read_csv(run_dir / "summary.csv")
    assert list(summary.columns[:5]) == ["method", "noise_kind", "noise_rate", "data.augment.scale_min", "accuracy_mean"]
    assert {"accuracy_std", "mean_class_accuracy_mean", "mean_class_accuracy_std"} <= set(summary.columns)
    assert sorted(summary["method"]) == ["ce", "soft"] and (summary["noise_rate"] == 0.3).all()
    assert summary["accuracy_mean"].between(0, 1).all()
    cells = pd.read_csv(run_dir / "cells.csv")
    assert len(cells) == 2 and set(cells["seed"]) == {0}
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert len(on_disk["failed"]) == 2 and on_disk["cells_finished"] == 2
    assert len(pd.read_csv(run_dir / "failed.csv")) == 2
    for name in ("accuracy_vs_noise_rate_symmetric.png", "accuracy_vs_scale_min.png",
                 "sls_targets_soft-symmetric-0.3-s0-scale_min0.8.png", "test_accuracy_per_epoch_symmetric_0.3.png"):
        assert (run_dir / "plots" / name).read_bytes()[:8] == PNG_MAGIC, name

    # Every evaluation protocol, from the runs' own results.json (trained through Ray Train).
    for protocol in ("model_pt", "val_selected", "last", "mean_last_5", "best_on_test"):
        assert cells[f"{protocol}_accuracy"].between(0, 1).all(), protocol
        assert f"{protocol}_accuracy_ci_low" in summary.columns
    assert (cells["protocols_from"] == "results.json").all() and (cells["mean_last_5_num_epochs"] == 1).all()
    assert (cells["val_selected_val_samples"] > 0).all()
    assert (cells["last_accuracy"] == cells["accuracy"]).all()  # the older column is the last-epoch protocol
    for cell_name in outcome.trained:
        results = json.loads((run_dir / "cells" / cell_name / "results.json").read_text())
        # model.pt follows its protocol: the last epoch for soft (a teacher), the best on validation for ce
        assert results["model"]["protocol"] == ("last" if cell_name.startswith("soft") else "val_selected")
        assert results["protocols"][results["model"]["protocol"]]["epoch"] == results["model"]["epoch"]
        row = cells[cells["cell"] == cell_name].iloc[0]
        assert (row["model_pt_protocol"], row["model_pt_epoch"]) == (results["model"]["protocol"], results["model"]["epoch"])
    pairs = pd.read_csv(run_dir / "paired.csv")
    assert set(zip(pairs["method"], pairs["baseline"])) == {("soft", "ce")} and (pairs["n_pairs"] == 1).all()
    assert len(pairs) == 5 and set(pairs["data.augment.scale_min"]) == {0.8}  # model_pt and the 4 fixed protocols
    report = (run_dir / "report.md").read_text()
    assert "## val_selected" in report and "2 finished of 4 cells; 2 failed" in report
    assert (run_dir / "grid.yaml").read_text() == grid.path.read_text()
    assert json.loads((run_dir / "outcome.json").read_text())["grid"] == str(grid.path)

    # A cell's seed sets both seeds.
    cell_cfg = (run_dir / "cells" / "soft-symmetric-0.3-s0-scale_min0.8" / "config.yaml").read_text()
    assert cell_cfg.count("seed: 0") >= 2

    # Rerun: finished cells are skipped (results.json untouched), failed ones are tried again.
    results = run_dir / "cells" / "ce-symmetric-0.3-s0-scale_min0.8" / "results.json"
    stamp = results.stat().st_mtime_ns
    again = run_grid(grid, run_dir, [f"data.shards={digit_shards}", *TINY])
    assert sorted(again.skipped) == sorted(outcome.trained) and again.trained == []
    assert len(again.failed) == 2
    assert results.stat().st_mtime_ns == stamp

    # --cells: only the matching cells are tried; the tables still cover every finished cell.
    only_ce = run_grid(grid, run_dir, [f"data.shards={digit_shards}", *TINY], only=["ce-*"])
    assert only_ce.skipped == ["ce-symmetric-0.3-s0-scale_min0.8"] and only_ce.trained == []
    assert [f["cell"] for f in only_ce.failed] == ["ce-symmetric-0.3-s0-scale_min0.95"]
    assert len(pd.read_csv(run_dir / "cells.csv")) == 2


def test_a_class_map_without_a_target_for_every_class_stops_those_cells_before_any_training(tmp_path, digit_shards):
    """Asymmetric cells whose class map leaves a class without a target cannot make their noise table: found
    for all of them at once, before a cell trains (the table is made once per distinct setting); the
    symmetric cells are fine."""
    from soft_dist.experiment.runner import prepare_cells

    grid = load_grid(write_grid(tmp_path, """
        base: BASE
        methods: [ce, soft]
        noise_kinds: [symmetric, asymmetric]
        noise_rates: [0.3]
        seeds: [0, 1]
        overrides: ["noise.class_map={0: 6, 1: 7}"]
    """))
    common = [*grid.overrides, f"data.shards={digit_shards}", *TINY]
    configs, problems = prepare_cells(grid, grid.cells(), common, [], tmp_path / "exp")
    assert sorted(problems) == sorted(c.name for c in grid.cells() if c.noise_kind == "asymmetric")
    assert len(problems) == 4 and all("class_map has no target for class 2" in e for e in problems.values())
    assert sorted(configs) == sorted(c.name for c in grid.cells() if c.noise_kind == "symmetric")  # trained as made


@pytest.mark.ray
def test_class_map_from_a_plain_models_confusion(tmp_path, digit_shards, ray_cluster):
    from soft_dist.config import load_config
    from soft_dist.experiment.confusion import class_map_override, derive_class_map
    from soft_dist.noise.setup import make_noise_table

    overrides = [f"data.shards={digit_shards}", *TINY]
    out = tmp_path / "confusion"
    class_map = derive_class_map(CONFIGS / "digits_cpu.yaml", overrides, out)
    assert sorted(class_map) == list(range(10)) and all(k != v for k, v in class_map.items())
    confusion = (out / "confusion.csv").read_text().splitlines()
    assert len(confusion) == 10 and all(len(row.split(",")) == 10 for row in confusion)
    assert json.loads((out / "class_map.json").read_text())["source"].startswith("plain CE, clean labels")
    assert load_config(out / "run" / "config.yaml").noise.kind == "none"  # trained on clean labels
    assert derive_class_map(CONFIGS / "digits_cpu.yaml", overrides, out) == class_map  # reused, not retrained

    # The map reaches the noise: every flipped label went to its class's mapped target.
    cfg = load_config(CONFIGS / "digits_cpu.yaml", [*overrides, "noise.kind=asymmetric", "noise.rate=0.3",
                                                    *class_map_override(class_map)])
    table, _ = make_noise_table(cfg)
    flipped = table.flipped
    assert flipped.any()
    assert all(class_map[int(c)] == int(n) for c, n in zip(table.clean[flipped], table.noisy[flipped]))


def test_cell_patterns_select_in_grid_order_and_reject_typos(tmp_path):
    from soft_dist.experiment.runner import select_cells

    grid = load_grid(write_grid(tmp_path, """
        base: BASE
        methods: [ce, mt, soft]
        noise_kinds: [symmetric]
        noise_rates: [0.5]
        seeds: [0]
        folds: 3
    """))
    chosen = select_cells(grid.cells(), ["*-fold2", "mt-*-fold0"])
    assert [c.name for c in chosen] == ["ce-symmetric-0.5-s0-fold2", "mt-symmetric-0.5-s0-fold0",
                                        "mt-symmetric-0.5-s0-fold2", "soft-symmetric-0.5-s0-fold2"]
    with pytest.raises(GridError, match=r"--cells.*'\*-fold3' matches no cell"):
        select_cells(grid.cells(), ["*-fold2", "*-fold3"])


def test_asymmetric_cells_get_the_derived_map(tmp_path):
    """Each cell's config: the derived class map reaches asymmetric cells only; seeds follow the cell."""
    from soft_dist.experiment.confusion import class_map_override
    from soft_dist.experiment.runner import cell_config

    grid = load_grid(write_grid(tmp_path, """
        base: BASE
        methods: [ce]
        noise_kinds: [symmetric, asymmetric]
        noise_rates: [0.3]
        seeds: [2]
        asymmetric_from: confusion
        sls_bars: false
    """))
    configs = {c.name: cell_config(grid, c, ["data.shards=/nowhere"], class_map_override({0: 1, 1: 0}))
               for c in grid.cells()}
    seen = {name: (cfg.noise.kind, cfg.noise.class_map, cfg.train.seed, cfg.noise.seed) for name, cfg in configs.items()}
    assert seen == {"ce-symmetric-0.3-s2": ("symmetric", None, 2, 2),
                    "ce-asymmetric-0.3-s2": ("asymmetric", {0: 1, 1: 0}, 2, 2)}
