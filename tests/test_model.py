"""The model: backbone choices, ImageNet weight file handling, heads and outputs, save/load, bf16, XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfwhale.nets.layers import GeMPooling
from tfwhale.nets.losses import BatchHardTripletLoss, losses_for
from tfwhale.nets.model import (
    BACKBONES,
    build_backbone,
    build_models,
    embedding_model_from,
    imagenet_weights_filename,
)

SIZE = 32
TINY = {
    "backbone": "TinyConvNet", "weights": None, "image_size": SIZE, "n_classes": 6, "embedding_dim": 8,
    "pooling": "gem", "gem_trainable": False, "dropout": 0.2,
}  # fmt: skip


def _batch(n: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype="uint8"), "label": np.arange(n) % 4}


def _targets(model: keras.Model, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: batch["label"] % 3 if name == "species" else batch["label"] for name in model.output_names}


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match="Unknown backbone 'ResNet50'") as error:
        build_backbone("ResNet50", 64)
    for name in ("EfficientNetB0", "EfficientNetB7", "EfficientNetV2S", "EfficientNetV2L", "TinyConvNet"):
        assert name in str(error.value)


def test_backbone_table_covers_efficientnet_v1_and_v2():
    v1 = [f"EfficientNetB{i}" for i in range(8)]
    v2 = [f"EfficientNetV2B{i}" for i in range(4)] + ["EfficientNetV2S", "EfficientNetV2M", "EfficientNetV2L"]
    lite = [f"EfficientNetLite{i}" for i in range(5)]
    assert set(v1 + v2 + lite + ["TinyConvNet"]) == set(BACKBONES)


def test_imagenet_weights_filenames_match_keras():
    # keras/src/applications/efficientnet*.py: file_name = <default model name> + "_notop.h5"
    assert imagenet_weights_filename("EfficientNetB0") == "efficientnetb0_notop.h5"
    assert imagenet_weights_filename("EfficientNetB6") == "efficientnetb6_notop.h5"
    assert imagenet_weights_filename("EfficientNetV2S") == "efficientnetv2-s_notop.h5"
    assert imagenet_weights_filename("EfficientNetV2B3") == "efficientnetv2-b3_notop.h5"
    with pytest.raises(ValueError, match="no ImageNet weights"):
        imagenet_weights_filename("TinyConvNet")


def _no_network(monkeypatch):
    def fail(fname, origin, **kwargs):
        raise Exception(
            f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(keras.src.utils.file_utils, "get_file", fail)


def test_missing_imagenet_file_offline_says_where_to_put_it(monkeypatch, tmp_path):
    _no_network(monkeypatch)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        build_backbone("EfficientNetB0", 64, weights="imagenet")
    message = str(error.value)
    assert f"place efficientnetb0_notop.h5 in {tmp_path / 'models'}" in message
    assert "Temporary failure in name resolution" in message


def test_broken_imagenet_file_is_reported_as_such(monkeypatch, tmp_path):
    _no_network(monkeypatch)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "efficientnetv2-b0_notop.h5").write_bytes(b"truncated")
    with pytest.raises(RuntimeError, match=r"efficientnetv2-b0_notop\.h5 is there but did not load"):
        build_backbone("EfficientNetV2B0", 64, weights="imagenet")


def test_weight_file_paths_are_refused():
    with pytest.raises(ValueError, match="weights must be None or 'imagenet'"):
        build_backbone("EfficientNetB0", 64, weights="/models/b0.h5")


def test_efficientnet_b0_backbone_feature_map():
    backbone = build_backbone("EfficientNetB0", 64)
    assert backbone.output_shape == (None, 2, 2, 1280)


OUTPUTS = {
    "arcface": {"arcface": (8, 6)},
    "softmax": {"softmax": (8, 6)},
    "triplet": {"embedding": (8, 8)},
    "triplet_softmax": {"embedding": (8, 8), "softmax": (8, 6)},
}


@pytest.mark.parametrize("head", OUTPUTS)
@pytest.mark.parametrize("species_head", [False, True])
def test_output_names_and_shapes_per_head(head, species_head):
    training_model, embedding_model = build_models(**TINY, head=head, n_species=3, species_head=species_head)
    expected = dict(OUTPUTS[head], **({"species": (8, 3)} if species_head else {}))
    outputs = training_model.predict(_batch(), verbose=0)
    assert {name: value.shape for name, value in outputs.items()} == expected
    assert sorted(training_model.output_names) == sorted(expected)
    embedding = embedding_model.predict(_batch()["image"], verbose=0)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)


def test_options_reach_the_layers():
    margins = [0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    model, _ = build_models(
        **{**TINY, "gem_trainable": True}, subcenters=2, dynamic_margins=margins, arc_s=20.0
    )
    arcface = model.get_layer("arcface")
    assert (arcface.k, arcface.margins, arcface.s) == (2, margins, 20.0)
    gem_p = model.get_layer("gem_pool").p
    assert any(weight is gem_p for weight in model.trainable_weights)
    avg_model, _ = build_models(**{**TINY, "pooling": "avg", "dropout": 0.0})
    assert isinstance(avg_model.get_layer("avg_pool"), keras.layers.GlobalAveragePooling2D)
    assert not any(isinstance(layer, GeMPooling) for layer in avg_model.layers)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in avg_model.layers)


def test_bad_choices_are_refused():
    with pytest.raises(ValueError, match="Unknown head 'cosface'"):
        build_models(**TINY, head="cosface")
    with pytest.raises(ValueError, match="Unknown pooling 'max'"):
        build_models(**{**TINY, "pooling": "max"})
    with pytest.raises(ValueError, match="needs n_species >= 1"):
        build_models(**TINY, species_head=True)


def test_training_and_embedding_models_share_layers():
    training_model, embedding_model = build_models(**TINY, head="triplet")
    assert embedding_model.get_layer("neck_dense") is training_model.get_layer("neck_dense")
    batch = _batch()
    np.testing.assert_array_equal(
        training_model.predict(batch, verbose=0)["embedding"],
        embedding_model.predict(batch["image"], verbose=0),
    )


@pytest.mark.parametrize("head", ["arcface", "triplet_softmax"])
def test_a_few_steps_lower_the_loss(head):
    keras.utils.set_random_seed(0)
    model, _ = build_models(**{**TINY, "dropout": 0.0}, head=head, n_species=3, species_head=True)
    model.compile(keras.optimizers.Adam(1e-2), loss=losses_for(model.output_names))
    batch = _batch()
    losses = [float(model.train_on_batch(batch, _targets(model, batch))[0]) for _ in range(8)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("head", ["arcface", "triplet_softmax"])
def test_outputs_stay_float32_under_mixed_bfloat16(head):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        training_model, embedding_model = build_models(**TINY, head=head, n_species=3, species_head=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert training_model.get_layer("neck_dense").compute_dtype == "bfloat16"
    outputs = training_model(_batch())
    assert {name: value.dtype for name, value in outputs.items()} == dict.fromkeys(outputs, tf.float32)
    assert embedding_model(_batch()["image"]).dtype == tf.float32


def test_keras_file_round_trip(tmp_path):
    training_model, embedding_model = build_models(**TINY, n_species=3, species_head=True, subcenters=2)
    batch = _batch()
    training_model.save(str(tmp_path / "train.keras"))
    embedding_model.save(str(tmp_path / "embed.keras"))
    loaded_training = keras.models.load_model(str(tmp_path / "train.keras"))
    loaded_embedding = keras.models.load_model(str(tmp_path / "embed.keras"))

    expected = training_model.predict(batch, verbose=0)
    for name, value in loaded_training.predict(batch, verbose=0).items():
        np.testing.assert_array_equal(value, expected[name])
    expected_embedding = embedding_model.predict(batch["image"], verbose=0)
    np.testing.assert_array_equal(loaded_embedding.predict(batch["image"], verbose=0), expected_embedding)
    from_training = embedding_model_from(loaded_training).predict(batch["image"], verbose=0)
    np.testing.assert_array_equal(from_training, expected_embedding)


def test_weights_file_round_trip(tmp_path):
    options = dict(TINY, head="triplet_softmax")
    training_model, _ = build_models(**options)
    path = str(tmp_path / "fold0.weights.h5")
    training_model.save_weights(path)
    fresh_training, fresh_embedding = build_models(**options)
    batch = _batch()
    assert not np.allclose(
        fresh_embedding.predict(batch["image"], verbose=0), training_model(batch)["embedding"]
    )
    fresh_training.load_weights(path)
    expected = training_model.predict(batch, verbose=0)
    for name, value in fresh_training.predict(batch, verbose=0).items():
        np.testing.assert_array_equal(value, expected[name])
    np.testing.assert_array_equal(fresh_embedding.predict(batch["image"], verbose=0), expected["embedding"])


def test_triplet_loss_restores_from_a_compiled_keras_file(tmp_path):
    model, _ = build_models(**TINY, head="triplet")
    model.compile("adam", loss=losses_for(model.output_names, triplet_margin=0.7))
    model.optimizer.build(model.trainable_variables)
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    restored = loaded.loss["embedding"] if isinstance(loaded.loss, dict) else loaded.loss
    assert isinstance(restored, BatchHardTripletLoss) and restored.margin == 0.7


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="XLA check runs on the TF backend")
def test_embedding_model_and_training_step_compile_with_xla():
    training_model, embedding_model = build_models(**TINY, n_species=3, species_head=True, subcenters=2)
    batch = _batch()
    eager = embedding_model.predict(batch["image"], verbose=0)
    xla_embed = tf.function(embedding_model, jit_compile=True)
    np.testing.assert_allclose(xla_embed(tf.constant(batch["image"], tf.float32)).numpy(), eager, atol=1e-5)

    training_model.compile(
        keras.optimizers.Adam(1e-3), loss=losses_for(training_model.output_names), jit_compile=True
    )
    assert training_model.jit_compile is True
    logs = training_model.train_on_batch(batch, _targets(training_model, batch), return_dict=True)
    assert np.isfinite(logs["loss"])
