"""Grid files with folds / split_seeds (validation, cells)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from soft_dist.experiment.grid import AXIS_KEYS, GridError, check_overrides, load_grid

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
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
