"""Losses: batch-hard triplet loss against a brute-force NumPy reference, the Keras wrapper, losses_for."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfwhale.nets.losses import BatchHardTripletLoss, batch_hard_triplet_loss, classification_loss, losses_for


def triplet_reference(labels, embeddings, margin, squared=False):
    """All (anchor, positive, negative) triples by brute force; hardest per anchor; mean over valid ones."""
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    n = len(labels)
    distance = np.zeros((n, n))
    for i, j in itertools.product(range(n), range(n)):
        distance[i, j] = np.sum((e[i] - e[j]) ** 2) if squared else np.linalg.norm(e[i] - e[j])
    per_anchor = []
    for a in range(n):
        positives = [distance[a, p] for p in range(n) if p != a and labels[p] == labels[a]]
        negatives = [distance[a, q] for q in range(n) if labels[q] != labels[a]]
        if positives and negatives:
            per_anchor.append(max(max(positives) - min(negatives) + margin, 0.0))
    return float(np.mean(per_anchor)) if per_anchor else 0.0


@pytest.mark.parametrize("squared", [False, True])
def test_triplet_loss_matches_brute_force(squared):
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])  # label 3 has no positive: that anchor is left out
    embeddings = rng.normal(size=(9, 5)).astype("float32")
    loss = float(batch_hard_triplet_loss(labels, embeddings, margin=0.3, squared=squared))
    assert loss == pytest.approx(triplet_reference(labels, embeddings, 0.3, squared), abs=1e-5)
    assert loss > 0


def _chord(degrees: float) -> float:
    """Distance between two unit vectors `degrees` apart."""
    return 2 * np.sin(np.radians(degrees) / 2)


def test_triplet_loss_hand_worked_and_singleton_excluded():
    # unit vectors: a0 at 0 deg and a1 at 90 deg (label 0), b at 45 deg (label 1), c at 180 deg (label 2).
    angles = np.radians([0.0, 90.0, 45.0, 180.0])
    embeddings = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype("float32")
    labels = np.array([0, 0, 1, 2])
    # only anchors 0 and 1 have a positive (each other, 90 deg apart); their nearest negative is b (45 deg).
    expected = _chord(90) - _chord(45) + 0.1
    assert float(batch_hard_triplet_loss(labels, embeddings, margin=0.1)) == pytest.approx(expected, abs=1e-5)


def test_triplet_loss_is_zero_without_any_valid_anchor():
    embeddings = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
    assert float(batch_hard_triplet_loss(np.arange(4), embeddings)) == 0.0  # no positives
    assert float(batch_hard_triplet_loss(np.zeros(4, int), embeddings)) == 0.0  # no negatives


def test_triplet_loss_gradient_is_finite_for_identical_embeddings():
    embeddings = tf.constant([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # rows 0 and 1 coincide
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        loss = batch_hard_triplet_loss(np.array([0, 0, 1, 1]), embeddings, margin=0.5)
    grad = tape.gradient(loss, embeddings).numpy()
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_keras_loss_wrapper_matches_function_and_serializes():
    rng = np.random.default_rng(2)
    labels, embeddings = np.array([0, 1, 0, 1, 2]), rng.normal(size=(5, 4)).astype("float32")
    loss = BatchHardTripletLoss(margin=0.2)
    expected = float(batch_hard_triplet_loss(labels, embeddings, 0.2))
    assert float(loss(labels, embeddings)) == pytest.approx(expected)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, BatchHardTripletLoss) and restored.margin == 0.2
    assert float(restored(labels, embeddings)) == pytest.approx(float(loss(labels, embeddings)))


def test_losses_for_maps_output_names():
    losses = losses_for(["arcface", "species", "embedding", "softmax"], triplet_margin=0.5)
    assert isinstance(losses["embedding"], BatchHardTripletLoss) and losses["embedding"].margin == 0.5
    for name in ("arcface", "species", "softmax"):
        assert isinstance(losses[name], keras.losses.SparseCategoricalCrossentropy)
        assert losses[name].get_config()["from_logits"] is True
    with pytest.raises(ValueError, match="no loss for output 'logits'"):
        losses_for(["logits"])


def test_classification_loss_is_cross_entropy_on_logits():
    logits = np.log(np.array([[0.7, 0.2, 0.1]], dtype="float32"))
    assert float(classification_loss()(np.array([1]), logits)) == pytest.approx(-np.log(0.2), rel=1e-5)
