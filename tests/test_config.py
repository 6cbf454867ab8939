"""Config: YAML + dotted overrides, unknown keys and bad values named with their file, saved config."""

from pathlib import Path

import pytest
import yaml

from soft_dist.config import ConfigError, load_config, save_config, to_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_follow_the_paper():
    cfg = load_config()
    m = cfg.method
    assert (m.name, m.tau, m.epsilon, m.lambda_, m.ema_decay, m.stage1_epochs) == ("soft", 0.125, 0.3, 10.0, 0.999, 6)
    assert (cfg.optim.name, cfg.optim.lr, cfg.train.batch_size, cfg.train.epochs) == ("adam", 1e-4, 64, 86)
    assert cfg.model.name == "resnet18" and cfg.data.image_size == 224


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
    with pytest.raises(ConfigError, match="train.epoch'.*command line"):
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
    assert data["method"]["lambda"] == 10.0 and data == to_dict(cfg)
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
