"""Custom layers: ArcFace logits against a NumPy reference, NaN safety, GeM limits, save/load, JAX parity."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfwhale.nets.layers import ArcMarginProduct, GeMPooling, L2Normalize, dynamic_margins


def arcface_reference(embedding, kernel, labels, s, margins, easy_margin=False, ls_eps=0.0, k=1):
    """Textbook ArcFace through the angle itself: cos(arccos(cos) + m), written independently of the layer."""
    e = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    w = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    n_classes = kernel.shape[1] // k
    cos = np.clip((e @ w).reshape(len(e), n_classes, k).max(axis=2), -1.0, 1.0)
    logits = np.empty_like(cos)
    for i, label in enumerate(labels):
        m = margins[label]
        for j in range(n_classes):
            theta = math.acos(cos[i, j])
            if easy_margin:
                phi = math.cos(theta + m) if cos[i, j] > 0 else cos[i, j]
            elif theta + m < math.pi:
                phi = math.cos(theta + m)
            else:
                phi = cos[i, j] - math.sin(math.pi - m) * m
            target = (1 - ls_eps) * (j == label) + ls_eps / n_classes
            logits[i, j] = s * (target * phi + (1 - target) * cos[i, j])
    return logits


def _arcface(kernel, **kwargs):
    layer = ArcMarginProduct(**kwargs)
    layer.build([(None, kernel.shape[0]), (None,)])
    layer.set_weights([kernel])
    return layer


def _angles_kernel(angles):
    """2-D class centres at the given angles from the x axis, so cos(theta) with e = [1, 0] is cos(angle)."""
    return np.array([[math.cos(a) for a in angles], [math.sin(a) for a in angles]], dtype="float32")


CASES = {
    "plain": {},
    "easy_margin": {"easy_margin": True},
    "label_smoothing": {"ls_eps": 0.1},
    "subcenters": {"k": 2},
    "dynamic_margins": {"margins": [0.55, 0.3, 0.1, 0.45, 0.2]},
}


@pytest.mark.parametrize("case", CASES)
def test_arcface_matches_numpy_reference(case):
    options = CASES[case]
    k = options.get("k", 1)
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(6, 8)).astype("float32")
    kernel = rng.normal(size=(8, 5 * k)).astype("float32")
    labels = np.array([0, 1, 2, 3, 4, 1])
    layer = _arcface(kernel, n_classes=5, s=30.0, m=0.3, **options)
    margins = options.get("margins", [0.3] * 5)
    other_options = {key: value for key, value in options.items() if key != "margins"}

    logits = layer([embedding, labels]).numpy()
    expected = arcface_reference(embedding, kernel, labels, 30.0, margins, **other_options)
    np.testing.assert_allclose(logits, expected, atol=2e-4)


def test_arcface_takes_the_th_mm_branch_near_pi():
    angles = [0.2, 1.0, 2.0, 3.0]  # class 3 sits at 3.0 rad: 3.0 + 0.3 > pi
    kernel = _angles_kernel(angles)
    embedding = np.array([[1.0, 0.0]] * 4, dtype="float32")
    labels = np.arange(4)
    layer = _arcface(kernel, n_classes=4, s=10.0, m=0.3)
    logits = layer([embedding, labels]).numpy()

    mm = math.sin(math.pi - 0.3) * 0.3
    assert logits[3, 3] == pytest.approx(10 * (math.cos(3.0) - mm), abs=1e-4)
    assert logits[3, 3] != pytest.approx(10 * math.cos(3.3), abs=1e-2)  # the naive formula would rise again
    for label, angle in enumerate(angles[:3]):
        assert logits[label, label] == pytest.approx(10 * math.cos(angle + 0.3), abs=1e-4)
    assert logits[0, 1] == pytest.approx(10 * math.cos(1.0), abs=1e-4)  # non-target: plain cosine
    expected = arcface_reference(embedding, kernel, labels, 10.0, [0.3] * 4)
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_arcface_without_label_gives_scaled_cosines():
    kernel = _angles_kernel([0.0, 1.0, 2.0])
    layer = _arcface(kernel, n_classes=3, s=20.0, m=0.5)
    embedding = np.array([[2.0, 0.0]], dtype="float32")
    expected = 20 * np.cos([0.0, 1.0, 2.0])
    np.testing.assert_allclose(layer(embedding).numpy()[0], expected, atol=1e-4)
    np.testing.assert_allclose(layer.cosine(embedding).numpy()[0], expected / 20, atol=1e-5)


def test_arcface_subcenters_take_the_nearest_centre_of_each_class():
    # class 0 has centres at 2.5 and 0.1 rad, class 1 at 1.0 and 3.0 rad (class-major columns).
    kernel = _angles_kernel([2.5, 0.1, 1.0, 3.0])
    layer = _arcface(kernel, n_classes=2, s=1.0, m=0.3, k=2)
    cosine = layer.cosine(np.array([[1.0, 0.0]], dtype="float32")).numpy()[0]
    np.testing.assert_allclose(cosine, [math.cos(0.1), math.cos(1.0)], atol=1e-5)


def test_arcface_finite_values_and_gradients_at_cos_plus_minus_one():
    # sin(theta) = 0 exactly: an unclamped sqrt has an infinite slope there. A small s keeps the softmax
    # unsaturated, so the upstream gradient is not 0 (TF's sqrt gradient forgives 0 * inf, JAX's does not).
    kernel = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype="float32")
    embedding = tf.constant([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # cos exactly 1 / -1
    labels = np.array([0, 0, 1])
    for easy_margin in (False, True):
        layer = _arcface(kernel, n_classes=2, s=2.0, m=0.5, easy_margin=easy_margin)
        with tf.GradientTape() as tape:
            tape.watch(embedding)
            logits = layer([embedding, labels])
            loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        grads = tape.gradient(loss, [embedding, layer.kernel])
        assert np.all(np.isfinite(logits.numpy()))
        assert all(np.all(np.isfinite(g.numpy())) for g in grads)
        assert logits.numpy()[0, 0] == pytest.approx(2 * math.cos(0.5), abs=1e-5)


def test_arcface_returns_float32_under_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        layer = ArcMarginProduct(n_classes=3)
        logits = layer([tf.ones((2, 4), dtype="bfloat16"), np.array([0, 2])])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert layer.compute_dtype == "float32"
    assert logits.dtype == tf.float32


def test_arcface_rejects_wrong_margin_count():
    with pytest.raises(ValueError, match="2 margins given for 3 classes"):
        ArcMarginProduct(n_classes=3, margins=[0.1, 0.2])


def test_dynamic_margins_formula():
    assert dynamic_margins([1, 16]) == pytest.approx([0.55, 0.3])
    assert dynamic_margins([81], a=1.0, lam=0.5, b=0.0) == pytest.approx([1 / 9])
    assert dynamic_margins([0]) == dynamic_margins([1])  # no training photo: margin unused, kept finite
    with pytest.raises(ValueError, match="class 1 has a negative photo count"):
        dynamic_margins([3, -1])


def test_gem_with_p_1_is_average_pooling():
    x = np.random.default_rng(1).uniform(0.1, 2.0, size=(2, 4, 5, 3)).astype("float32")
    np.testing.assert_allclose(GeMPooling(p=1.0)(x).numpy(), x.mean(axis=(1, 2)), rtol=1e-5)


def test_gem_with_large_p_approaches_max_pooling():
    x = np.random.default_rng(2).uniform(0.1, 1.0, size=(2, 4, 4, 3)).astype("float32")
    largest, mean = x.max(axis=(1, 2)), x.mean(axis=(1, 2))
    gem3, gem100 = GeMPooling(p=3.0)(x).numpy(), GeMPooling(p=100.0)(x).numpy()
    np.testing.assert_allclose(gem100, largest, rtol=0.03)  # (1/16)^(1/100) is the worst case: 0.973
    assert np.all((mean < gem3) & (gem3 < gem100))


def test_gem_clamps_negative_activations_at_eps():
    x = np.full((1, 2, 2, 1), -5.0, dtype="float32")
    assert GeMPooling(p=3.0, eps=1e-6)(x).numpy()[0, 0] == pytest.approx(1e-6, rel=1e-3)


def test_gem_trainable_p_gets_a_gradient():
    x = tf.constant(np.random.default_rng(3).uniform(0.1, 2.0, size=(2, 3, 3, 4)).astype("float32"))
    layer = GeMPooling(p=3.0, trainable_p=True)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x))
    (grad,) = tape.gradient(loss, [layer.p])
    assert np.isfinite(grad.numpy()) and abs(float(grad)) > 1e-4
    assert layer.trainable_weights == [layer.p]
    assert GeMPooling(p=3.0).trainable_weights == []


def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows_zero():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype="float32")
    np.testing.assert_allclose(L2Normalize()(x).numpy(), [[0.6, 0.8], [0.0, 0.0]], atol=1e-6)


def _round_trip(model, inputs, tmp_path):
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0))
    return loaded


def test_gem_and_l2_normalize_save_load_round_trip(tmp_path):
    features = keras.Input((4, 4, 3))
    gem = GeMPooling(p=3.0, trainable_p=True, name="gem")
    model = keras.Model(features, L2Normalize(axis=-1)(gem(features)))
    gem.p.assign(2.5)  # a "learned" p must come back from the weights, not the config
    x = np.random.default_rng(4).uniform(0, 3, size=(2, 4, 4, 3)).astype("float32")
    loaded = _round_trip(model, x, tmp_path)
    assert float(loaded.get_layer("gem").p.numpy()) == 2.5


def test_arcface_save_load_round_trip(tmp_path):
    embedding, label = keras.Input((6,)), keras.Input((), dtype="int32")
    head = ArcMarginProduct(n_classes=4, s=16.0, k=2, ls_eps=0.05, margins=[0.1, 0.2, 0.3, 0.4], name="arc")
    model = keras.Model([embedding, label], head([embedding, label]))
    x = [np.random.default_rng(5).normal(size=(3, 6)).astype("float32"), np.array([0, 3, 1])]
    loaded = _round_trip(model, x, tmp_path)
    assert loaded.get_layer("arc").get_config() == head.get_config()


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_layers_give_the_same_values_on_the_jax_backend(tmp_path):
    rng = np.random.default_rng(6)
    arrays = {
        "embedding": rng.normal(size=(4, 8)).astype("float32"),
        "kernel": rng.normal(size=(8, 10)).astype("float32"),
        "labels": np.array([0, 4, 2, 2]),
        "features": rng.uniform(-0.5, 2.0, size=(2, 3, 3, 5)).astype("float32"),
    }
    np.savez(tmp_path / "inputs.npz", **arrays)
    config = {"n_classes": 5, "s": 30.0, "k": 2, "ls_eps": 0.1, "margins": [0.5, 0.4, 0.3, 0.2, 0.1]}
    script = f"""
import json, keras, numpy as np
from tfwhale.nets.layers import ArcMarginProduct, GeMPooling
assert keras.backend.backend() == "jax"
a = dict(np.load({str(tmp_path / "inputs.npz")!r}))
head = ArcMarginProduct(**json.loads({json.dumps(config)!r}))
head.build([(None, 8), (None,)])
head.set_weights([a["kernel"]])
np.savez({str(tmp_path / "jax.npz")!r},
         logits=np.asarray(head([a["embedding"], a["labels"]])),
         gem=np.asarray(GeMPooling(p=3.0)(a["features"])))
"""
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
    from_jax = np.load(tmp_path / "jax.npz")

    head = _arcface(arrays["kernel"], **config)
    from_tf = head([arrays["embedding"], arrays["labels"]]).numpy()
    np.testing.assert_allclose(from_jax["logits"], from_tf, atol=1e-4)
    np.testing.assert_allclose(from_jax["gem"], GeMPooling(p=3.0)(arrays["features"]).numpy(), rtol=1e-5)
