"""Stage 2 (train) backbones: EfficientNet-Lite0..4 in Keras, as Google's original (tensorflow/tpu lite).

What makes Lite differ from EfficientNet B0..: no squeeze-excite, ReLU6 everywhere, the stem (32) and
head (1280) filters and the first and last stages' repeats are not scaled, BatchNorm epsilon 1e-3. TF
"same" padding (Keras `padding="same"`; a symmetric pad would shift stride-2 outputs by one pixel, and
the ImageNet weights would no longer fit). Inputs are 0-255 pixels, normalised inside the model as
(x - 127) / 128, like every other backbone here. Layer names are the contract with pretrained_lite.
"""

from __future__ import annotations

import math

import keras

from tfwhale.nets import pretrained_lite

# (width, depth, native resolution, classifier dropout)
VARIANTS = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
    3: (1.2, 1.4, 280, 0.3),
    4: (1.4, 1.8, 300, 0.3),
}
# Stages of EfficientNet-B0: (repeats, kernel, stride, expand ratio, filters in, filters out)
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS, HEAD_FILTERS = 32, 1280
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.99
DROP_CONNECT_RATE = 0.2


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Google's rule: scale, round to a multiple of 8, never lose more than 10%."""
    filters *= width
    rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * filters:
        rounded += divisor
    return int(rounded)


def stage_repeats(variant: int) -> list[int]:
    """Blocks per stage; Lite keeps the first and last stages at one block."""
    depth = VARIANTS[variant][1]
    last = len(STAGES) - 1
    return [r if i in (0, last) else math.ceil(depth * r) for i, (r, *_) in enumerate(STAGES)]


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, activation: bool = True):
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x) if activation else x


def _block(x, index: int, kernel: int, stride: int, expand: int, filters_in: int, filters_out: int, drop):
    """Mobile inverted bottleneck without squeeze-excite: expand 1x1, depthwise, project 1x1."""
    name = f"block{index}"
    shortcut = x
    if expand != 1:
        x = _conv_bn(x, filters_in * expand, 1, 1, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dwconv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(max_value=6.0, name=f"{name}_dw_relu6")(x)
    x = _conv_bn(x, filters_out, 1, 1, f"{name}_project", activation=False)
    if stride == 1 and filters_in == filters_out:
        if drop > 0:  # stochastic depth: drop the whole residual branch per example
            x = keras.layers.Dropout(drop, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
        x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return x


def efficientnet_lite(
    variant: int,
    include_top: bool = False,
    weights: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    name: str | None = None,
) -> keras.Model:
    """EfficientNet-Lite`variant` taking 0-255 pixels; same arguments as keras.applications.EfficientNetB0.

    include_top adds the ImageNet classifier (logits, 1000 classes, before softmax) named "predictions".
    weights="imagenet" loads Google's ImageNet weights (Lite0..2, the `tfwhale[lite]` extra).
    """
    if variant not in VARIANTS:
        raise ValueError(f"EfficientNet-Lite variant must be one of {sorted(VARIANTS)}, got {variant}")
    if weights not in (None, "imagenet"):
        raise ValueError(f"EfficientNetLite{variant}: weights must be None or 'imagenet', got {weights!r}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if include_top and weights == "imagenet" and classes != 1000:
        raise ValueError("the ImageNet classifier has 1000 classes")
    width, _, _, top_dropout = VARIANTS[variant]
    image = keras.Input(shape=input_shape or (None, None, 3), name="pixels")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalize")(image)
    x = _conv_bn(x, STEM_FILTERS, 3, 2, "stem")
    x = _blocks(x, variant, width)
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "top")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(top_dropout, name="top_dropout")(x)
        x = keras.layers.Dense(classes, name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(image, x, name=name or f"efficientnet_lite{variant}")
    if weights == "imagenet":
        pretrained_lite.load_imagenet(model, variant)
    return model


def _blocks(x, variant: int, width: float):
    repeats = stage_repeats(variant)
    total, index = sum(repeats), 0
    for (_, kernel, stride, expand, filters_in, filters_out), count in zip(STAGES, repeats, strict=True):
        filters_in = round_filters(filters_in, width)
        filters_out = round_filters(filters_out, width)
        for repeat in range(count):
            drop = DROP_CONNECT_RATE * index / total
            x = _block(
                x, index, kernel, stride if repeat == 0 else 1, expand,
                filters_in if repeat == 0 else filters_out, filters_out, drop,
            )  # fmt: skip
            index += 1
    return x


def _constructor(variant: int):
    def build(
        include_top: bool = False,
        weights: str | None = None,
        input_shape: tuple[int, int, int] | None = None,
        pooling: str | None = None,
        classes: int = 1000,
        name: str = f"efficientnet_lite{variant}",
    ) -> keras.Model:
        return efficientnet_lite(variant, include_top, weights, input_shape, pooling, classes, name)

    build.__name__ = build.__qualname__ = f"EfficientNetLite{variant}"
    build.__doc__ = f"EfficientNet-Lite{variant} (native {VARIANTS[variant][2]} px); see efficientnet_lite()."
    return build


EfficientNetLite0 = _constructor(0)
EfficientNetLite1 = _constructor(1)
EfficientNetLite2 = _constructor(2)
EfficientNetLite3 = _constructor(3)
EfficientNetLite4 = _constructor(4)

CONSTRUCTORS = {f"EfficientNetLite{v}": globals()[f"EfficientNetLite{v}"] for v in VARIANTS}
