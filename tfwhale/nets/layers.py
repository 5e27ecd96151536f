"""Stage 2 (train) building blocks: GeM pooling, L2 normalisation and the (sub-center, dynamic) ArcFace head.

Written with `keras` and `keras.ops` only, so the same layers run on the TensorFlow and JAX backends and
compile with XLA (static shapes, no Python-side data dependence).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

# Floor for squared norms and for 1 - cos^2: keeps sqrt and its gradient finite at exactly 0.
_TINY = 1e-12


def l2_normalize(x, axis: int = -1):
    """x / ||x|| along `axis`; a zero vector stays zero instead of becoming NaN."""
    squared_norm = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared_norm, _TINY))


@keras.saving.register_keras_serializable(package="tfwhale")
class GeMPooling(keras.layers.Layer):
    """Generalized mean pooling over H and W of an NHWC feature map: (mean(clamp(x, eps)^p))^(1/p).

    p=1 is average pooling, p -> inf approaches max pooling. `p` is a weight (trainable if `trainable_p`),
    so a learned value is saved with the model weights; the config keeps the initial value.
    Computed in float32 even under a mixed policy (x^p over thousands of positions loses too much in bf16).
    """

    def __init__(self, p: float = 3.0, trainable_p: bool = False, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.initial_p = float(p)
        self.trainable_p = bool(trainable_p)
        self.eps = float(eps)

    def build(self, input_shape):
        self.p = self.add_weight(
            name="p",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_p),
            dtype="float32",
            trainable=self.trainable_p,
            autocast=False,
        )

    def call(self, inputs):
        x = ops.maximum(ops.cast(inputs, "float32"), self.eps)
        pooled = ops.mean(ops.power(x, self.p), axis=(1, 2))
        return ops.cast(ops.power(pooled, 1.0 / self.p), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "p": self.initial_p, "trainable_p": self.trainable_p, "eps": self.eps}


@keras.saving.register_keras_serializable(package="tfwhale")
class L2Normalize(keras.layers.Layer):
    """Scales vectors to unit L2 norm along `axis` (the embedding the kNN stage compares by cosine)."""

    def __init__(self, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)

    def call(self, inputs):
        return l2_normalize(inputs, axis=self.axis)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


@keras.saving.register_keras_serializable(package="tfwhale")
class ArcMarginProduct(keras.layers.Layer):
    """ArcFace head (additive angular margin), optionally with k sub-centers and per-class margins.

    Called with `[embedding, label]` it returns the training logits
    `s * cos(theta + m)` for each row's own class and `s * cos(theta)` for the others; called with the
    embedding alone it returns plain scaled cosines `s * cos(theta)` (inference, blending with kNN).
    `cosine(embedding)` gives the unscaled cosines. theta is the angle between the L2-normalised embedding
    and the nearest of the class's k normalised centres (weight [D, n_classes * k], class-major:
    column c * k + j is centre j of class c).

    cos(theta + m) = cos * cos(m) - sin * sin(m) with cos clamped to [-1, 1] and 1 - cos^2 floored at a tiny
    positive value, so neither the value nor the gradient is NaN at cos = +-1. Where theta + m would pass pi
    (cos <= th = cos(pi - m)) the target logit is cos - mm, mm = sin(pi - m) * m, keeping it monotonic;
    with `easy_margin` the margin is applied only where cos > 0. `ls_eps` smooths the one-hot that mixes
    margin and plain cosines: (1 - ls_eps) * one_hot + ls_eps / n_classes.

    `margins` (one per class, e.g. from `dynamic_margins`) replaces the single margin `m`.
    Computes in float32 and returns float32 logits even under mixed_bfloat16 (dtype defaults to float32).
    """

    def __init__(
        self,
        n_classes: int,
        s: float = 30.0,
        m: float = 0.30,
        easy_margin: bool = False,
        ls_eps: float = 0.0,
        k: int = 1,
        margins: Sequence[float] | None = None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if n_classes < 1 or k < 1:
            raise ValueError(f"ArcMarginProduct needs n_classes >= 1 and k >= 1, got {n_classes=} {k=}")
        if margins is not None and len(margins) != n_classes:
            raise ValueError(f"ArcMarginProduct: {len(margins)} margins given for {n_classes} classes")
        self.n_classes = int(n_classes)
        self.s = float(s)
        self.m = float(m)
        self.easy_margin = bool(easy_margin)
        self.ls_eps = float(ls_eps)
        self.k = int(k)
        self.margins = None if margins is None else [float(v) for v in margins]

    def build(self, input_shape):
        embedding_shape = input_shape[0] if isinstance(input_shape[0], list | tuple) else input_shape
        self.kernel = self.add_weight(
            name="kernel",
            shape=(int(embedding_shape[-1]), self.n_classes * self.k),
            initializer="glorot_uniform",
            dtype="float32",
            autocast=False,
        )

    def cosine(self, embedding):
        """Cosine between each embedding and its nearest centre of every class: [B, n_classes] in [-1, 1]."""
        embedding = l2_normalize(ops.cast(embedding, "float32"))
        cosines = ops.matmul(embedding, l2_normalize(self.kernel, axis=0))
        if self.k > 1:
            cosines = ops.max(ops.reshape(cosines, (-1, self.n_classes, self.k)), axis=-1)
        return ops.clip(cosines, -1.0, 1.0)

    def call(self, inputs):
        if not isinstance(inputs, list | tuple):
            return self.s * self.cosine(inputs)
        embedding, label = inputs
        cos = self.cosine(embedding)
        label = ops.reshape(ops.cast(label, "int32"), (-1,))
        cos_m, sin_m, th, mm = self._margin_terms(label)
        sin = ops.sqrt(ops.clip(1.0 - ops.square(cos), _TINY, 1.0))
        phi = cos * cos_m - sin * sin_m
        # Beyond th, theta + m would pass pi and cos(theta + m) rise again: use cos - mm instead (easy_margin:
        # no margin at all where cos <= 0).
        threshold, fallback = (0.0, cos) if self.easy_margin else (th, cos - mm)
        phi = ops.where(cos > threshold, phi, fallback)
        one_hot = ops.one_hot(label, self.n_classes, dtype="float32")
        if self.ls_eps > 0:
            one_hot = (1.0 - self.ls_eps) * one_hot + self.ls_eps / self.n_classes
        return self.s * (one_hot * phi + (1.0 - one_hot) * cos)

    def _margin_terms(self, label):
        """cos(m), sin(m), th, mm as scalars, or as [B, 1] columns picked by label for per-class margins."""
        if self.margins is None:
            m = self.m
            return math.cos(m), math.sin(m), math.cos(math.pi - m), math.sin(math.pi - m) * m
        margins = np.asarray(self.margins, dtype="float64")[:, None]
        table = np.hstack(
            [np.cos(margins), np.sin(margins), np.cos(np.pi - margins), np.sin(np.pi - margins) * margins]
        )
        picked = ops.take(ops.convert_to_tensor(table.astype("float32")), label, axis=0)
        return tuple(picked[:, i : i + 1] for i in range(4))

    def compute_output_shape(self, input_shape):
        embedding_shape = input_shape[0] if isinstance(input_shape[0], list | tuple) else input_shape
        return (embedding_shape[0], self.n_classes)

    def get_config(self):
        return {
            **super().get_config(),
            "n_classes": self.n_classes,
            "s": self.s,
            "m": self.m,
            "easy_margin": self.easy_margin,
            "ls_eps": self.ls_eps,
            "k": self.k,
            "margins": self.margins,
        }


def dynamic_margins(
    photo_counts: Sequence[int], a: float = 0.5, lam: float = 0.25, b: float = 0.05
) -> list[float]:
    """Per-class ArcFace margins m_i = a * n_i^(-lam) + b: rare individuals get larger margins.

    The defaults are those of the dynamic-margin paper (Ha et al. 2020, Google Landmark Recognition 2020
    3rd place, arXiv:2010.05350). The Happywhale 1st place (knshnb) used the same form with values tuned
    by Optuna: individuals a=0.27126, lam=0.364399, b=0.05; species a=0.226253, lam=0.720133, b=0.05.
    `photo_counts[i]` is the number of training photos of class i. A class with no photo (all of them in
    the validation fold) is never a training target, so its margin is unused; it gets the n=1 value.
    """
    counts = np.asarray(photo_counts, dtype="float64")
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError("dynamic_margins: photo_counts must be a non-empty 1-D sequence")
    if np.any(counts < 0):
        bad = int(np.argmin(counts))
        raise ValueError(f"dynamic_margins: class {bad} has a negative photo count ({counts[bad]:g})")
    return (a * np.maximum(counts, 1.0) ** (-lam) + b).tolist()
