"""Config loading: defaults <- YAML <- overrides, typed values, helpful errors, save/load round trip."""

import dataclasses

import pytest
import yaml

from tfwhale.core import files
from tfwhale.core.config import (
    CONFIGS_DIR,
    Config,
    ConfigError,
    config_to_dict,
    load_config,
    save_config,
)


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_are_the_baseline_recipe():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.train.lr_max_per_sample == 5e-6 and cfg.train.lr_start == 1e-6 and cfg.train.lr_min == 1e-6
    assert (cfg.train.ramp_epochs, cfg.train.sustain_epochs, cfg.train.decay) == (4.0, 0.0, 0.9)
    assert (cfg.model.head, cfg.model.arc_s, cfg.model.arc_m) == ("arcface", 30.0, 0.3)


def test_yaml_then_overrides_take_precedence(tmp_path):
    path = _yaml(tmp_path, "train:\n  epochs: 7\ndata:\n  batch_size: 8\npredict:\n  # tta_flip: true\n")
    cfg = load_config(path, ["train.epochs=3"])
    assert cfg.train.epochs == 3  # override beats the file
    assert cfg.data.batch_size == 8  # file beats the default
    assert cfg.train.seed == Config().train.seed  # untouched keys keep defaults
    assert load_config(path).train.epochs == 7


def test_override_values_are_converted_to_field_types():
    cfg = load_config(
        None,
        [
            "train.lr_start=1e-7",  # YAML reads this as a string
            "train.clipnorm=1",  # int for an optional float
            "model.weights=null",
            "augment.crop_scale=[0.5, 1]",
            "train.steps_per_epoch=None",
            "model.backbone=EfficientNetB3",
        ],
    )
    assert cfg.train.lr_start == 1e-7 and isinstance(cfg.train.lr_start, float)
    assert cfg.train.clipnorm == 1.0 and isinstance(cfg.train.clipnorm, float)
    assert cfg.model.weights is None
    assert cfg.augment.crop_scale == (0.5, 1.0)
    assert cfg.train.steps_per_epoch is None
    assert cfg.model.backbone == "EfficientNetB3"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trian.epochs=3", "unknown config section 'trian' (did you mean 'train'?)"),
        ("train.epoch=3", "unknown key train.epoch (did you mean 'train.epochs'?)"),
        ("train.epochs=abc", "train.epochs expects int, got 'abc' (str)"),
        ("train.epochs=2.5", "train.epochs expects int, got 2.5 (float)"),
        ("data.cache=maybe", "data.cache expects bool, got 'maybe' (str)"),
        (
            "model.head=arcfase",
            "model.head expects one of 'arcface', 'softmax', 'triplet', 'triplet_softmax'",
        ),
        (
            "augment.crop_scale=[0.5]",
            "augment.crop_scale expects a list of 2 (float, float), got [0.5] (list)",
        ),
        ("train.epochs", "expected section.key=value"),
        ("augment.crop_scale=[0.5", "the value is not valid YAML"),
    ],
)
def test_bad_overrides_name_the_key_and_the_problem(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert expected in str(err.value)


def test_file_errors_name_the_file(tmp_path):
    path = _yaml(tmp_path, "model:\n  embeding_dim: 256\n")
    with pytest.raises(
        ConfigError, match=r"run\.yaml.*unknown key model\.embeding_dim.*'model\.embedding_dim'"
    ):
        load_config(path)
    path = _yaml(tmp_path, "- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(path)
    path = _yaml(tmp_path, "train: 5\n")
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        load_config(path)


def test_value_checks():
    with pytest.raises(ConfigError, match=r"augment\.hue=0\.7"):
        load_config(None, ["augment.hue=0.7"])
    with pytest.raises(ConfigError, match=r"augment\.crop_scale=\[0\.9, 0\.5\]"):
        load_config(None, ["augment.crop_scale=[0.9, 0.5]"])
    with pytest.raises(ConfigError, match=r"data\.batch_size=24 must equal .* \(8 x 4\)"):
        load_config(None, ["model.head=triplet", "data.batch_size=24"])
    cfg = load_config(None, ["model.head=triplet", "data.batch_size=32", "data.ids_per_batch=8"])
    assert cfg.data.photos_per_id == 4


def test_save_then_load_round_trips(tmp_path):
    cfg = load_config(
        "tiny_cpu", ["augment.erasing_area=[0.1, 0.3]", "augment.rotation=12.5", "model.weights=null"]
    )
    path = str(tmp_path / "out" / "config.yaml")
    files.makedirs(str(tmp_path / "out"))
    save_config(cfg, path)
    saved = yaml.safe_load(files.read_text(path))
    assert set(saved) == {"data", "augment", "model", "train", "predict"}
    assert saved["augment"]["erasing_area"] == [0.1, 0.3]
    assert len(saved["augment"]) == len(dataclasses.fields(cfg.augment))  # every key, not only changes
    assert load_config(path) == cfg
    assert config_to_dict(load_config(path)) == config_to_dict(cfg)


def test_bare_names_load_shipped_configs():
    tiny = load_config("tiny_cpu")
    assert (
        tiny.data.image_size is None and tiny.model.weights is None and tiny.model.backbone == "TinyConvNet"
    )
    b7 = load_config("effnet_b7_768")
    assert (b7.model.backbone, b7.data.image_size, b7.data.batch_size) == ("EfficientNetB7", 768, 4)
    with pytest.raises(ConfigError, match=r"'effnet_b9' not found.*'effnet_b6_768'"):
        load_config("effnet_b9")


@pytest.mark.parametrize("name", sorted(n for n in files.listdir(CONFIGS_DIR) if n.endswith(".yaml")))
def test_shipped_configs_hold_only_changes(name):
    changes = yaml.safe_load(files.read_text(files.join(CONFIGS_DIR, name)))
    defaults = config_to_dict(Config())
    cfg = config_to_dict(load_config(files.join(CONFIGS_DIR, name)))
    for section, values in changes.items():
        for key in values:
            assert cfg[section][key] != defaults[section][key], f"{name}: {section}.{key} repeats the default"
