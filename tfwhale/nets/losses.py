"""Stage 2 (train) losses: cross-entropy for the ArcFace / softmax / species heads, batch-hard triplet loss.

The model's outputs are named after their head ("arcface", "softmax", "embedding", "species"); `losses_for`
maps those names to loss objects so `compile(loss=..., loss_weights=...)` lines up with `build_models`.
"""

from __future__ import annotations

from collections.abc import Iterable

import keras
from keras import ops

from tfwhale.nets.layers import l2_normalize

# Added under the sqrt where a distance is exactly 0: the value stays 0, the gradient stays finite.
_SQRT_EPS = 1e-16
# Beyond any distance between unit vectors (at most 2, squared 4).
_FAR = 5.0


def classification_loss() -> keras.losses.Loss:
    """Sparse categorical cross-entropy on logits: ArcFace logits, plain softmax and species heads."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def pairwise_distances(embeddings, squared: bool = False):
    """[B, B] Euclidean (or squared) distances between L2-normalised rows: ||a - b||^2 = 2 - 2 a.b."""
    normalized = l2_normalize(ops.cast(embeddings, "float32"))
    squared_distances = ops.maximum(2.0 - 2.0 * ops.matmul(normalized, ops.transpose(normalized)), 0.0)
    if squared:
        return squared_distances
    # sqrt has an infinite slope at 0 (every diagonal entry): nudge exact zeros, then put them back to 0.
    zero_mask = ops.cast(ops.equal(squared_distances, 0.0), "float32")
    return ops.sqrt(squared_distances + zero_mask * _SQRT_EPS) * (1.0 - zero_mask)


def batch_hard_triplet_loss(labels, embeddings, margin: float = 0.3, squared: bool = False):
    """Mean over anchors of max(d(a, hardest positive) - d(a, hardest negative) + margin, 0).

    Hardest positive: the farthest other photo with the anchor's label; hardest negative: the nearest photo
    with a different label (Hermans et al. 2017, "In Defense of the Triplet Loss"). Anchors without a
    positive or without a negative in the batch are left out of the mean; a batch with no valid anchor
    gives 0. Distances are taken between L2-normalised embeddings, so they lie in [0, 2].
    """
    labels = ops.reshape(labels, (-1,))
    distances = pairwise_distances(embeddings, squared=squared)
    same_label = ops.cast(ops.equal(ops.expand_dims(labels, 0), ops.expand_dims(labels, 1)), "float32")
    positive_mask = same_label * (1.0 - ops.eye(ops.shape(labels)[0], dtype="float32"))
    negative_mask = 1.0 - same_label

    # Distances are >= 0, so masking with 0 leaves the row maximum over positives intact.
    hardest_positive = ops.max(distances * positive_mask, axis=1)
    # Push non-negatives beyond any real distance so the row minimum picks a negative.
    hardest_negative = ops.min(distances + _FAR * (1.0 - negative_mask), axis=1)

    valid = ops.cast(
        ops.logical_and(ops.max(positive_mask, axis=1) > 0, ops.max(negative_mask, axis=1) > 0), "float32"
    )
    per_anchor = ops.maximum(hardest_positive - hardest_negative + margin, 0.0) * valid
    return ops.sum(per_anchor) / ops.maximum(ops.sum(valid), 1.0)


@keras.saving.register_keras_serializable(package="tfwhale")
class BatchHardTripletLoss(keras.losses.Loss):
    """`batch_hard_triplet_loss` as a Keras loss: y_true = integer labels [B], y_pred = embeddings [B, D].

    Returns one scalar per batch (the mean over valid anchors), so per-sample `sample_weight` has no
    meaning here; the training pipeline must batch several photos per individual for it to learn anything.
    """

    def __init__(
        self, margin: float = 0.3, squared: bool = False, name: str = "batch_hard_triplet", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)
        self.squared = bool(squared)

    def call(self, y_true, y_pred):
        return batch_hard_triplet_loss(y_true, y_pred, margin=self.margin, squared=self.squared)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "squared": self.squared}


def losses_for(output_names: Iterable[str], triplet_margin: float = 0.3) -> dict[str, keras.losses.Loss]:
    """Loss per training-model output name, ready for `model.compile(loss=...)`.

    "embedding" gets the batch-hard triplet loss; "arcface", "softmax" and "species" cross-entropy on logits.
    """
    losses = {}
    for name in output_names:
        if name == "embedding":
            losses[name] = BatchHardTripletLoss(margin=triplet_margin)
        elif name in ("arcface", "softmax", "species"):
            losses[name] = classification_loss()
        else:
            raise ValueError(
                f"losses_for: no loss for output {name!r}; expected arcface/softmax/embedding/species"
            )
    return losses
