"""keras-hub backbones (`hub:PRESET`): layers, each family from a local preset, train -> predict -> identify.

Offline: every backbone is a small random-weight keras-hub model of a real family, saved as a local preset
directory in the test. Tests that need keras-hub skip when it is not installed (the `hub` extra).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfwhale import identify, predict
from tfwhale.nets.hub_backbone import HubPixelNormalize, TokenSplit, uses_keras_hub

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_hub = pytest.mark.skipif(
    importlib.util.find_spec("keras_hub") is None,
    reason="keras-hub is not installed: pip install -e '.[hub]' (`tensorflow`, not tensorflow-cpu; README)",
)
TRAIN = [
    "--config", "tiny_cpu", "--set", "data.batch_size=4", "--set", "data.shuffle_buffer=16",
    "--set", "model.embedding_dim=16", "--set", "model.weights=preset", "--set", "train.epochs=1",
]  # fmt: skip


def test_pixel_normalize_is_the_converters_affine_map_and_round_trips(tmp_path):
    scale, offset = [0.5, 0.25, 2.0], [-1.0, 0.0, 1.0]
    pixels = np.random.RandomState(0).randint(0, 256, (2, 4, 4, 3)).astype("uint8")
    model = keras.Sequential([keras.Input((4, 4, 3), dtype="uint8"), HubPixelNormalize(scale, offset)])
    expected = pixels.astype("float32") * np.array(scale, "float32") + np.array(offset, "float32")
    np.testing.assert_allclose(model.predict(pixels, verbose=0), expected, rtol=1e-6)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(pixels, verbose=0), expected, rtol=1e-6)


def test_token_split_takes_the_class_token_or_the_patch_grid_and_round_trips(tmp_path):
    # 1 class token, 2 registers, a 2x3 patch grid; token t holds the value t in every channel
    tokens = np.broadcast_to(np.arange(9, dtype="float32")[None, :, None], (2, 9, 4)).copy()
    inputs = keras.Input((9, 4))
    parts = [TokenSplit("cls", 3, (2, 3))(inputs), TokenSplit("patches", 3, (2, 3))(inputs)]
    model = keras.Model(inputs, parts)
    cls, grid = model.predict(tokens, verbose=0)
    np.testing.assert_array_equal(cls, tokens[:, 0])
    assert grid.shape == (2, 2, 3, 4)
    np.testing.assert_array_equal(grid[0, :, :, 0], [[3, 4, 5], [6, 7, 8]])  # row-major, registers skipped
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras").predict(tokens, verbose=0)
    np.testing.assert_array_equal(reloaded[1], grid)
    with pytest.raises(ValueError, match="'cls' or 'patches'"):
        TokenSplit("register", 3, (2, 3))


def test_only_hub_models_ask_for_keras_hub_on_load(tmp_path):
    from tfwhale.nets.model import build_models

    _, embedding_model = build_models(backbone="TinyConvNet", weights=None, image_size=32, n_classes=3)
    embedding_model.save(tmp_path / "tiny.keras")
    assert not uses_keras_hub(str(tmp_path / "tiny.keras"))


def test_unknown_backbone_names_the_hub_form():
    from tfwhale.nets.model import check_backbone

    check_backbone("hub:dinov2_base")
    for bad in ("ResNet9000", "hub:", "hub:  "):
        with pytest.raises(ValueError, match="hub:PRESET"):
            check_backbone(bad)


def test_train_refuses_a_missing_preset_or_keras_hub_before_any_work(tmp_path, caplog):
    from tests.records_fixture import make_records
    from tfwhale import train

    records = make_records(tmp_path, n_individuals=3, size=32)
    args = [*TRAIN, "--records", records, "--out", str(tmp_path / "run"), "--fold", "0"]
    missing = "keras-hub" if importlib.util.find_spec("keras_hub") is None else "not a keras-hub preset"
    assert train.main([*args, "--set", f"model.backbone=hub:{tmp_path}/nowhere"]) == 1
    assert missing in caplog.text
    assert not os.path.exists(tmp_path / "run")


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    pytest.importorskip("keras_hub", reason="keras-hub is not installed (the `hub` extra)")
    from tests.hub_fixture import FAMILIES, make_preset

    root = str(tmp_path_factory.mktemp("presets"))
    return {family: make_preset(root, family) for family in FAMILIES}


def _embed(embedding_model, seed: int = 0) -> np.ndarray:
    pixels = np.random.RandomState(seed).randint(0, 256, (3, 32, 32, 3)).astype("uint8")
    return embedding_model.predict(pixels, verbose=0)


@needs_hub
@pytest.mark.parametrize("family", ["efficientnet", "efficientnetv2", "dinov2", "vit"])
def test_each_family_builds_embeds_and_reloads_without_its_preset(presets, family, tmp_path):
    from tfwhale.nets.model import build_models, load_saved_model

    preset = shutil.copytree(presets[family], tmp_path / "preset")
    _, embedding_model = build_models(
        backbone=f"hub:{preset}", weights="preset", image_size=32, n_classes=5, embedding_dim=8
    )
    embeddings = _embed(embedding_model)
    assert embeddings.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert np.abs(embeddings[0] - embeddings[1]).max() > 1e-3  # different photos, different embeddings
    embedding_model.save(tmp_path / "embedding.keras")
    assert uses_keras_hub(str(tmp_path / "embedding.keras"))  # so load_saved_model imports keras-hub first
    shutil.rmtree(preset)  # the weights now live in the .keras file alone
    reloaded = load_saved_model(str(tmp_path / "embedding.keras"))
    np.testing.assert_allclose(_embed(reloaded), embeddings, atol=1e-5)


@needs_hub
@pytest.mark.parametrize("family", ["efficientnetv2", "dinov2"])
def test_mixed_bfloat16_computes_the_backbone_in_bf16_and_embeds_in_float32(presets, family):
    from tfwhale.nets.model import build_models

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        train_model, embedding_model = build_models(
            backbone=f"hub:{presets[family]}", weights="preset", image_size=32, n_classes=5, embedding_dim=8
        )
        backbone = train_model.get_layer("hub_backbone")
        assert {layer.dtype_policy.name for layer in backbone.layers[1:]} == {"mixed_bfloat16"}
        embeddings = _embed(embedding_model)
        assert embeddings.dtype == np.float32 and np.isfinite(embeddings).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


@needs_hub
def test_preset_weights_are_loaded_and_weights_null_is_a_fresh_init(presets):
    from tfwhale.nets.hub_backbone import build_hub_backbone

    def backbone_output(weights, seed):
        keras.utils.set_random_seed(seed)
        features = build_hub_backbone(f"hub:{presets['efficientnet']}", 32, weights, "avg")
        return features.model.predict(np.full((1, 32, 32, 3), 128, "uint8"), verbose=0)

    np.testing.assert_allclose(backbone_output("preset", 1), backbone_output("preset", 2), atol=1e-6)
    assert np.abs(backbone_output(None, 1) - backbone_output(None, 2)).max() > 1e-4


@needs_hub
def test_efficientnet_config_keeps_num_features_and_nores_option(presets):
    from tests.hub_fixture import EFFICIENTNET
    from tfwhale.nets.hub_backbone import import_keras_hub

    keras_hub = import_keras_hub()
    backbone = keras_hub.models.EfficientNetBackbone(**EFFICIENTNET)
    config = backbone.get_config()
    assert config["num_features"] == 96
    assert config["stackwise_nores_option"] == [False, True, False]
    rebuilt = keras_hub.models.EfficientNetBackbone.from_config(config)
    # the head conv is num_features x the last stack's width coefficient (0.25) wide; the default would be 320
    assert rebuilt.output.shape[-1] == backbone.output.shape[-1] == 24
    assert rebuilt.count_params() == backbone.count_params()


@needs_hub
def test_token_pooling_choices_for_dinov2_and_vit(presets):
    from tfwhale.nets.hub_backbone import build_hub_backbone

    dinov2 = f"hub:{presets['dinov2']}"
    # 32 px -> 28 px (the largest multiple of the 14 px patch): a 2x2 grid after 1 class + 2 register tokens
    cls = build_hub_backbone(dinov2, 32, "preset", "avg", "auto")
    assert cls.pooling is None and cls.model.output.shape == (None, 32)
    grid = build_hub_backbone(dinov2, 32, "preset", "avg", "gem")
    assert grid.pooling == "gem" and grid.model.output.shape == (None, 2, 2, 32)
    assert build_hub_backbone(dinov2, 32, "preset", "gem", "mean").pooling == "avg"
    vit = build_hub_backbone(f"hub:{presets['vit']}", 48, "preset", "avg", "mean")  # resized to its 32 px
    assert vit.model.output.shape == (None, 4, 4, 32)
    with pytest.raises(ValueError, match="token_pooling"):
        build_hub_backbone(dinov2, 32, "preset", "avg", "max")


@needs_hub
def test_a_preset_without_image_converter_is_a_clear_error(presets, tmp_path):
    from tfwhale.nets.hub_backbone import build_hub_backbone

    preset = shutil.copytree(presets["efficientnet"], tmp_path / "bare")
    os.remove(os.path.join(preset, "image_converter.json"))
    with pytest.raises(ValueError, match="no image converter"):
        build_hub_backbone(f"hub:{preset}", 32, "preset", "avg")


# ---- the whole pipeline through the CLIs -----------------------------------------------------------------


def _python(code_or_module: list[str], env_extra: dict[str, str] | None = None, timeout: int = 600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env_extra or {}))
    result = subprocess.run(
        [sys.executable, *code_or_module], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    pytest.importorskip("keras_hub", reason="keras-hub is not installed (the `hub` extra)")
    from tests.run_fixture import build_synthetic_records

    return build_synthetic_records(tmp_path_factory.mktemp("hub_records"), individuals=8, size=32)


def _pipeline(synthetic, preset: str, root, train_extra=(), env_extra=None) -> dict:
    """train one fold with hub:PRESET -> predict -> identify; then again from the run alone, preset gone."""
    data, records = synthetic
    run, out = str(root / "run"), str(root / "predict")
    train_args = [*TRAIN, "--set", f"model.backbone=hub:{preset}", "--records", records, "--out", run]
    _python(["-m", "tfwhale.train", *train_args, "--fold", "0", *train_extra], env_extra)
    fold = os.path.join(run, "fold0")
    with open(os.path.join(fold, "run.json")) as f:
        info = json.load(f)
    assert info["status"] == "finished"
    shutil.rmtree(preset)  # predict and identify must need only the run folder (no preset, no network)
    # in this process (saves two TensorFlow + keras-hub start-ups); uses_keras_hub covers a fresh process
    assert predict.main(["--runs", run, "--records", records, "--out", out, "--examples", "0"]) == 0
    photo = os.path.join(data, "train_images", sorted(os.listdir(os.path.join(data, "train_images")))[0])
    answers = identify.identify(identify.parse_args([photo, "--runs", run, "--gallery", out]))
    return {"fold": fold, "out": out, "identify": answers, "info": info}


def _check_pipeline(result: dict) -> None:
    oof = np.load(os.path.join(result["fold"], "oof.npz"))["embeddings"]
    assert oof.shape[1] == 16 and np.isfinite(oof).all()
    assert np.abs(oof - oof[0]).max() > 1e-3  # the photos do not all embed alike
    assert os.path.exists(os.path.join(result["out"], "submission.csv"))
    (answer,) = result["identify"]
    assert len(answer.labels) == 5 and len(set(answer.labels)) == 5


@needs_hub
def test_dinov2_preset_trains_predicts_and_identifies_offline(synthetic, presets, tmp_path):
    preset = shutil.copytree(presets["dinov2"], tmp_path / "preset")
    _check_pipeline(_pipeline(synthetic, str(preset), tmp_path))


@needs_hub
@pytest.mark.slow
@pytest.mark.parametrize("family", ["efficientnet", "efficientnetv2", "vit"])
def test_cnn_and_vit_presets_train_predict_and_identify_offline(synthetic, presets, family, tmp_path):
    preset = shutil.copytree(presets[family], tmp_path / "preset")
    _check_pipeline(_pipeline(synthetic, str(preset), tmp_path))


@needs_hub
@pytest.mark.slow
@pytest.mark.parametrize("family", ["efficientnetv2", "dinov2"])
def test_two_cpu_replicas_mirrored_strategy(synthetic, presets, family, tmp_path):
    preset = shutil.copytree(presets[family], tmp_path / "preset")
    result = _pipeline(synthetic, str(preset), tmp_path, ["--cpu-devices", "2"])
    _check_pipeline(result)
    assert result["info"]["replicas"] == 2


@needs_hub
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
@pytest.mark.parametrize("family", ["efficientnetv2", "dinov2"])
def test_jax_backend_two_host_devices(synthetic, presets, family, tmp_path):
    preset = shutil.copytree(presets[family], tmp_path / "preset")
    env = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = _pipeline(synthetic, str(preset), tmp_path, env_extra=env)
    _check_pipeline(result)  # predict and identify reload the JAX-trained run on TensorFlow
    assert result["info"]["replicas"] == 2 and result["info"]["versions"]["keras_backend"] == "jax"
