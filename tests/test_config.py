"""Config: YAML + dotted overrides, unknown keys and bad values named with their file, saved config."""

from pathlib import Path

import pytest
import yaml

from soft_dist.config import Config, ConfigError, config_yaml, load_config, save_config, to_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_base_yaml_is_the_papers_setting():
    # The paper's values (section 4.2), whether configs/base.yaml sets them or the built-in defaults do: a
    # default changed in soft_dist/config.py must not silently change the paper's setting.
    # The paper starts from pretrained weights; its tau 1/8 comes with them (from random weights: 0.5 / C).
    cfg = load_config(CONFIGS / "base.yaml", ["model.pretrained=imagenet"])
    assert load_config(CONFIGS / "base.yaml").method.tau_for(7) == pytest.approx(0.5 / 7)
    m = cfg.method
    assert (m.name, m.tau_for(7), m.epsilon, m.lambda_, m.rampup_epochs, m.ema_decay, m.stage1_epochs) == (
        "soft", 0.125, 0.3, 10.0, 5.0, 0.999, 6)
    assert (cfg.optim.name, cfg.optim.lr, cfg.train.batch_size, cfg.train.epochs) == ("adam", 1e-4, 64, 86)
    assert cfg.model.name == "resnet18" and cfg.data.image_size == 224


def test_tau_follows_the_class_count_unless_given():
    from soft_dist.config import resolve_for_classes

    cfg = load_config(CONFIGS / "base.yaml", ["model.pretrained=imagenet"])
    assert cfg.method.tau is None and cfg.method.tau_relative == 0.875  # no bundled config pins tau
    assert resolve_for_classes(cfg, 7).method.tau == pytest.approx(1 / 8)  # the paper's value on RAF-DB
    assert resolve_for_classes(cfg, 10).method.tau == pytest.approx(0.0875)
    assert resolve_for_classes(cfg, 100).method.tau == pytest.approx(0.00875)
    assert cfg.method.tau is None  # resolving returns a copy
    # From random weights the null default is half of uniform; an explicit tau_relative wins either way
    scratch = load_config(CONFIGS / "base.yaml")
    assert scratch.method.tau_relative == 0.5 and resolve_for_classes(scratch, 10).method.tau == pytest.approx(0.05)
    assert load_config(CONFIGS / "base.yaml", ["method.tau_relative=0.875"]).method.tau_for(10) == pytest.approx(0.0875)
    assert load_config(None, ["model.pretrained=imagenet", "method.tau_relative=0.5"]).method.tau_relative == 0.5
    assert "tau_relative: 0.5" in config_yaml(scratch)  # the saved config says what ran
    with pytest.raises(ValueError, match="unresolved"):
        Config().method.tau_for(10)  # built by hand, never read: nothing to resolve it by
    given = load_config(CONFIGS / "base.yaml", ["method.tau=0.2"])
    assert resolve_for_classes(given, 10).method.tau == 0.2  # an explicit tau wins
    with pytest.raises(ConfigError, match="method.tau_relative"):
        load_config(None, ["method.tau_relative=2.5"])  # tau must stay below 1 for any C >= 2
    with pytest.raises(ConfigError, match="at least 2 classes"):
        resolve_for_classes(cfg, 1)


def test_dotted_override_applied(tmp_path):
    path = write(tmp_path, "method:\n  tau: 0.2\n")
    cfg = load_config(path, ["method.tau=0.3", "method.lambda=2", "train.use_gpu=true", "data.shards=/x/y"])
    assert cfg.method.tau == 0.3 and cfg.method.lambda_ == 2.0 and cfg.train.use_gpu is True
    assert cfg.data.shards == "/x/y"


def test_unknown_key_rejected_with_name_and_file(tmp_path):
    path = write(tmp_path, "method:\n  tua: 0.2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "method.tua" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ConfigError, match="train.epoch'.*command line.*did you mean 'train.epochs'"):
        load_config(None, ["train.epoch=3"])


@pytest.mark.parametrize(
    "override, field",
    [
        ("method.tau=0", "method.tau"),
        ("method.tau=1.0", "method.tau"),
        ("method.epsilon=1.0", "method.epsilon"),
        ("method.epsilon=-0.1", "method.epsilon"),
        ("method.lambda=-1", "method.lambda"),
        ("method.ema_decay=1.5", "method.ema_decay"),
        ("noise.rate=1.0", "noise.rate"),
        ("noise.kind=gaussian", "noise.kind"),
        ("noise.file_format=csv", "noise.file_format"),
        ("method.name=dmue", "method.name"),
        ("train.epochs=two", "train.epochs"),
        # lists: every element gets the field's type and range, and the length is fixed
        ("data.std=[0,0,0]", "data.std[0]"),  # would divide by zero: NaN training
        ("data.mean=[a,b,c]", "data.mean[0]"),
        ("data.mean=[0.5,0.5]", "data.mean"),
        ("data.mean=[0.5,0.5,2]", "data.mean[2]"),
        ("data.std=[.nan,1,1]", "data.std[0]"),
        ("method.lambda=.inf", "method.lambda"),
        ("train.torch_threads=-4", "train.torch_threads"),  # workers crashed
        ("train.fail_at_step=-1", "train.fail_at_step"),
        ("train.sync_batchnorm=true", "train.sync_batchnorm"),  # torch's SyncBatchNorm is GPU only; 2 CPU workers
    ],
)
def test_out_of_range_values_named(tmp_path, override, field):
    key, value = override.split("=")
    section, name = key.split(".")
    path = write(tmp_path, f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"'{field}'" in str(err.value) and str(path) in str(err.value)


def test_include_and_saved_config_roundtrip(tmp_path):
    base = write(tmp_path, "train:\n  epochs: 3\nmethod:\n  tau: 0.2\n", "base.yaml")
    top = write(tmp_path, f"include: {base.name}\nmethod:\n  epsilon: 0.1\n")
    cfg = load_config(top)
    assert cfg.train.epochs == 3 and cfg.method.tau == 0.2 and cfg.method.epsilon == 0.1
    saved = save_config(cfg, tmp_path / "out" / "config.yaml")
    data = yaml.safe_load(saved.read_text())
    assert data["method"]["lambda"] == Config().method.lambda_ and data == to_dict(cfg)
    assert load_config(saved) == cfg


def test_removed_field_of_an_older_saved_config_is_ignored(tmp_path):
    # train.log_every did nothing and is gone; a run saved before must still resume.
    old = write(tmp_path, "train:\n  epochs: 3\n  log_every: 20\n", "config.yaml")
    assert load_config(old).train.epochs == 3 and "log_every" not in to_dict(load_config(old))["train"]


def test_shipped_configs_load():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert files
    for path in files:
        load_config(path)


# ----------------------------------------------------------------------------- one home per default


def _deletable_keys(data: dict, kind: str) -> list[tuple]:
    """The keys of a bundled file that could be left out: every leaf of a run config (``include`` aside);
    for grids and sweeps every top-level key, each key of a mapping below it and each entry of a list of
    overrides (``base`` and ``extends`` aside)."""
    if kind == "configs":
        def leaves(node, prefix):
            for key, value in node.items():
                if isinstance(value, dict) and key != "class_map":
                    yield from leaves(value, (*prefix, key))
                else:
                    yield (*prefix, key)
        return [k for k in leaves(data, ()) if k != ("include",)]
    keys = []
    for key, value in data.items():
        if key in ("base", "extends"):
            continue
        keys.append((key,))
        if isinstance(value, dict) and key not in ("space",):
            keys += [(key, sub) for sub in value]
        elif isinstance(value, list) and key == "overrides":
            keys += [(key, i) for i in range(len(value))]
    return keys


def _without(data: dict, key: tuple) -> dict:
    import copy

    out = copy.deepcopy(data)
    node = out
    for part in key[:-1]:
        node = node[part]
    del node[key[-1]]
    return out


def _resolved(path: Path, kind: str):
    """What a bundled file means once loaded: the resolved config; a grid's options and the config its
    cells start from; a sweep as saved with its resolved base config."""
    if kind == "configs":
        return to_dict(load_config(path))
    if kind == "experiments":
        import dataclasses

        from soft_dist.experiment.grid import load_grid

        grid = load_grid(path)
        fields = {k: v for k, v in dataclasses.asdict(grid).items() if k not in ("path", "overrides")}
        return fields, to_dict(load_config(grid.base, grid.overrides))
    from soft_dist.tune.sweep_config import load_sweep

    sweep = load_sweep(path)
    return sweep.to_dict(), to_dict(sweep.base)


@pytest.mark.parametrize("kind", ["configs", "experiments", "sweeps"])
def test_bundled_files_hold_no_value_they_would_get_anyway(tmp_path, kind):
    # A key whose value is the built-in default (or the included file's, or the base config's) is a second
    # home for that default: it hides a later change of the default. Each key is left out in turn; the
    # file must then mean something else.
    from soft_dist.tune.sweep_config import SPACE_HOME

    files = sorted((CONFIGS / kind if kind != "configs" else CONFIGS).glob("*.yaml"))
    assert files
    repeats = []
    for path in files:
        data = yaml.safe_load(path.read_text()) or {}
        for ref in ("include", "base", "extends"):  # the copies live in tmp_path: make their references absolute
            if isinstance(data.get(ref), str):
                data[ref] = str(path.parent / data[ref])
        copy = tmp_path / path.name
        copy.write_text(yaml.safe_dump(data, sort_keys=False))
        meaning = _resolved(copy, kind)
        for key in _deletable_keys(data, kind):
            if key == ("space",) and path.resolve() == SPACE_HOME.resolve():
                continue  # the home of DEFAULT_SPACE: without it there is no default space
            copy.write_text(yaml.safe_dump(_without(data, key), sort_keys=False))
            try:
                same = _resolved(copy, kind) == meaning
            except ValueError:  # ConfigError, GridError: the key is needed
                same = False
            if same:
                repeats.append(f"{path.relative_to(CONFIGS)}: {'.'.join(map(str, key))}")
    assert not repeats, f"bundled files repeat a value they inherit anyway: {repeats}"


def test_the_default_search_space_is_declared_once():
    import ast

    from soft_dist.tune.sweep_config import DEFAULT_SPACE, SPACE_HOME

    assert DEFAULT_SPACE == yaml.safe_load(SPACE_HOME.read_text())["space"]
    dimensions = list(DEFAULT_SPACE.items())
    for path in CONFIGS.rglob("*.yaml"):  # no other bundled file searches one of its dimensions as it does
        if path.resolve() != SPACE_HOME.resolve():
            space = (yaml.safe_load(path.read_text()) or {}).get("space") or {}
            assert not [d for d in space.items() if d in dimensions], path
    package = Path(__file__).resolve().parents[1] / "soft_dist"
    for path in package.rglob("*.py"):  # nor does the code spell it out
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                try:
                    value = ast.literal_eval(node)
                except ValueError:
                    continue
                assert value != DEFAULT_SPACE and value not in DEFAULT_SPACE.values(), f"{path}:{node.lineno}"


# ----------------------------------------------------------------------------- one declaration per field


def test_docs_config_md_is_the_generated_reference():
    from soft_dist.cli.config import reference_text

    committed = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert committed == reference_text(), "docs/config.md is stale: run `make docs`"


def test_every_field_has_a_meaning_and_appears_in_the_docs():
    from soft_dist.config import config_docs, field_rows

    rows = field_rows()
    assert len(rows) > 60
    docs = config_docs()
    for row in rows:
        assert len(row["meaning"]) > 10, row["key"]
        assert f"`{row['key']}`" in docs
    # a declaration without a doc is refused when the dataclass is defined
    from soft_dist.config import setting

    with pytest.raises(TypeError, match="doc"):
        setting(1)


def test_a_preset_pin_is_in_the_resolved_and_saved_config(tmp_path):
    # sls0 is SLS with epsilon 0: the config a run saves must say so, whatever the file's epsilon.
    cfg = load_config(CONFIGS / "base.yaml", ["method.name=sls0"])
    assert cfg.method.epsilon == 0.0
    saved = yaml.safe_load((save_config(cfg, tmp_path / "config.yaml")).read_text())
    assert saved["method"]["epsilon"] == 0.0
    assert load_config(CONFIGS / "base.yaml", ["method.name=soft"]).method.epsilon == 0.3


def test_bundled_configs_by_name_from_any_directory(tmp_path, monkeypatch):
    from soft_dist.experiment.grid import load_grid
    from soft_dist.tune.sweep_config import load_sweep

    monkeypatch.chdir(tmp_path)
    assert load_config("digits_cpu").data.image_size == load_config(CONFIGS / "digits_cpu.yaml").data.image_size
    assert load_grid("digits_cpu").base.name == "digits_cpu.yaml"
    assert load_sweep("digits_cpu").base.data.image_size == 32
    with pytest.raises(ConfigError, match="file not found: nope.*bundled: .*digits_cpu"):
        load_config("nope")
    (tmp_path / "digits_cpu").write_text("train:\n  epochs: 3\n")  # a file of that name wins over the bundle
    assert load_config("digits_cpu").train.epochs == 3


def _imported_after(code: str) -> set[str]:
    import subprocess
    import sys

    probe = (f"import sys\n{code}\n"
             "print('loaded:', *(m for m in ('torch', 'ray', 'nvidia.dali', 'webdataset') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.strip().splitlines()[-1].split()[1:])


def test_help_and_config_show_import_neither_torch_nor_ray():
    # The CLI's parser and `config show` must stay light: no torch, Ray, DALI or webdataset import.
    assert _imported_after("from soft_dist.cli import build_parser; build_parser().format_help()") == set()
    assert _imported_after("from soft_dist.cli import main; main(['config', 'show', 'digits_cpu'])") == set()


def test_the_method_package_imports_no_ray_dali_or_webdataset():
    modules = "presets, objective, losses, sls, teacher, model"
    assert _imported_after(f"from soft_dist.method import {modules}") == {"torch"}


def test_shard_options_come_from_one_declaration(capsys):
    from soft_dist.cli import main
    from soft_dist.shard.build import ShardConfig

    with pytest.raises(ConfigError, match="option '--quality'.*\\[1, 100\\]"):
        ShardConfig(layout="digits", quality=0).validate()
    with pytest.raises(ConfigError, match="option '--layout'.*required"):
        ShardConfig().validate()
    # the command line gets its flags, defaults and checks from the same fields
    assert main(["shard", "--layout", "digits", "--size", "4", "--out", "unused"]) == 2
    assert "option '--size': must be in [8, inf], got 4" in capsys.readouterr().err


@pytest.mark.parametrize("body, field, message", [
    ("methods: [soft, dmue]", "methods", "method.name must be one of"),
    ("noise_rates: [1.2]", "noise_rates", "noise.rate must be in [0.0, 1.0), got 1.2"),
    ("extra: {method.tau: [0.1, 3]}", "extra.method.tau", "method.tau must be in (0.0, 1.0), got 3.0"),
    ("overrides: [train.epochs=0]", "overrides", "train.epochs must be in [1, inf], got 0"),
])
def test_grid_axes_are_checked_by_the_fields_they_set(tmp_path, body, field, message):
    from soft_dist.experiment.grid import GridError, load_grid

    defaults = {"methods": "methods: [soft]", "noise_rates": "noise_rates: [0.2]"}
    lines = [f"base: {CONFIGS / 'digits_cpu.yaml'}", "noise_kinds: [symmetric]", "seeds: [0]", body]
    lines += [text for key, text in defaults.items() if not body.startswith(key)]
    path = write(tmp_path, "\n".join(lines) + "\n", "grid.yaml")
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert f"'{field}'" in str(err.value) and message in str(err.value) and str(path) in str(err.value)


def test_the_wheel_ships_the_bundled_configs(tmp_path):
    # A non-editable install has no checkout beside it: the configs must be package data.
    import subprocess
    import sys
    import zipfile

    import shutil

    # Built from a copy: pip builds in the source tree, and the checkout must not get a build/ folder.
    repo, src = Path(__file__).resolve().parents[1], tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "configs", "soft_dist"):
        copy = shutil.copytree if (repo / name).is_dir() else shutil.copy2
        kwargs = {"symlinks": True, "ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}
        copy(repo / name, src / name, **kwargs)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    str(src), "-w", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("soft_dist-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in CONFIGS.rglob("*.yaml"):
        assert f"soft_dist/configs/{path.relative_to(CONFIGS).as_posix()}" in names


def test_resume_refuses_a_change_to_what_is_learned_and_names_the_started_value(reference_run, capsys):
    from soft_dist.cli import main

    saved = (reference_run / "config.yaml").read_text()
    for override, started in (("optim.lr=0.1", "optim.lr=0.001"), ("method.tau=0.2", "method.tau=0.05"),
                              ("noise.rate=0.5", "noise.rate=0.3"), ("data.image_size=32", "data.image_size=16")):
        assert main(["train", "--resume", str(reference_run), override]) == 2
        err = capsys.readouterr().err
        assert f"config field '{override.split('=')[0]}'" in err and started in err and "train.epochs" in err
    assert (reference_run / "config.yaml").read_text() == saved  # the saved config stays what ran


def test_the_keys_a_resume_may_change_do_not_change_what_is_learned():
    from soft_dist.config import resumable_keys

    keys = resumable_keys()
    assert {"train.epochs", "train.workers", "data.cache_max_gb", "train.keep_state"} <= set(keys)
    assert not [k for k in keys if k.split(".")[0] in ("method", "noise", "optim")]
    assert not {"data.shards", "data.image_size", "train.batch_size", "train.seed", "model.name"} & set(keys)


def test_train_without_a_config_shows_a_working_command(capsys):
    from soft_dist.cli import main

    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "nothing to train on" in err and "--config digits_cpu" in err and "soft-dist shard --layout digits" in err


def test_a_wrong_shards_folder_lists_the_shard_folders_beside_it(digit_shards, tmp_path, capsys):
    from soft_dist.cli import main

    typo = f"{digit_shards}x"
    assert main(["train", "--config", "digits_cpu", "--run-dir", str(tmp_path / "run"), f"data.shards={typo}"]) == 2
    err = capsys.readouterr().err
    assert f"{typo}/manifest.json: not found" in err and str(digit_shards) in err.split("Shard folders there: ")[1]
    assert not (tmp_path / "run").exists()


def test_relative_paths_become_absolute_against_the_commands_folder(tmp_path, monkeypatch):
    from soft_dist.config import with_absolute_paths

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(None, ["data.shards=data_shards/rafdb", "data.cache_dir=~/cache", "noise.kind=file",
                             "noise.file=lists/noisy.txt", "model.pretrained=imagenet"])
    out = with_absolute_paths(cfg, cwd=tmp_path)
    assert out.data.shards == str(tmp_path / "data_shards" / "rafdb")
    assert out.data.cache_dir == str(tmp_path / "home" / "cache")
    assert out.noise.file == str(tmp_path / "lists" / "noisy.txt") and out.model.pretrained == "imagenet"
    assert cfg.data.shards == "data_shards/rafdb"  # a copy
    remote = load_config(None, ["data.shards=s3://bucket/shards", f"model.pretrained={tmp_path}/w.pt"])
    again = with_absolute_paths(remote, cwd=tmp_path / "elsewhere")
    assert again.data.shards == "s3://bucket/shards" and again.model.pretrained == f"{tmp_path}/w.pt"
    assert again.noise.file is None and again.data.cache_dir is None
