"""Training-time image augmentation for the train stage's tf.data pipeline (stateless, static shapes).

Every op takes one float32 image [S, S, 3] in 0..255 and a stateless seed (int32/int64 [2]), so a
pipeline seeded with the same numbers augments the same example the same way, and parallel map
calls never share random state. Ops that are off in the config are skipped entirely.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfwhale.core.config import AugmentConfig

_FILL_MODES = {"reflect": "REFLECT", "nearest": "NEAREST", "constant": "CONSTANT"}


def _uniform(seed: tf.Tensor, low: float, high: float, shape: tuple[int, ...] = ()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)


def _coin(seed: tf.Tensor, prob: float) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed) < prob


def _log_uniform(seed: tf.Tensor, low: float, high: float) -> tf.Tensor:
    return tf.exp(_uniform(seed, math.log(low), math.log(high)))


def flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return tf.image.stateless_random_flip_left_right(image, seed)


FLIP_SUFFIX = "_flip"  # augment.flip=new_class: the mirrored photos' individual is id + FLIP_SUFFIX


def training_classes(cfg: AugmentConfig, n_individuals: int) -> int:
    """Classes the training head learns: with flip=new_class each individual's mirror is one more."""
    return 2 * n_individuals if cfg.flip == "new_class" else n_individuals


def flip_as_new_class(
    image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, n_individuals: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """With p=0.5 the mirrored image, labelled as the mirror class label + n_individuals."""
    mirrored = tf.random.stateless_uniform([], seed) < 0.5
    image = tf.where(mirrored, tf.image.flip_left_right(image), image)
    label = tf.where(mirrored, label + tf.cast(n_individuals, label.dtype), label)
    return image, label


def random_resized_crop(
    image: tf.Tensor, seed: tf.Tensor, scale: tuple[float, float], ratio: tuple[float, float]
) -> tf.Tensor:
    """Crop a box of random area fraction and aspect ratio, resized back to the input size."""
    size = image.shape[0]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    area = _uniform(seeds[0], *scale)
    aspect = _log_uniform(seeds[1], *ratio)
    # box sides as fractions of the image side; clipped so a box never leaves the image
    width = tf.minimum(tf.sqrt(area * aspect), 1.0)
    height = tf.minimum(tf.sqrt(area / aspect), 1.0)
    top = _uniform(seeds[2], 0.0, 1.0) * (1.0 - height)
    left = _uniform(seeds[3], 0.0, 1.0) * (1.0 - width)
    box = tf.stack([top, left, top + height, left + width])[None]
    cropped = tf.image.crop_and_resize(image[None], box, [0], [size, size], method="bilinear")
    return cropped[0]


def affine(image: tf.Tensor, seed: tf.Tensor, rotation: float, shear: float, fill_mode: str) -> tf.Tensor:
    """Rotate and shear about the image centre by random angles within +-rotation / +-shear degrees."""
    size = image.shape[0]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    theta = _uniform(seeds[0], -rotation, rotation) * (math.pi / 180.0)
    phi = _uniform(seeds[1], -shear, shear) * (math.pi / 180.0)
    cos, sin, tan = tf.cos(theta), tf.sin(theta), tf.tan(phi)
    # The op maps each output pixel to the input pixel it samples (the inverse transform); the
    # angles are drawn symmetrically, so using this matrix as the inverse gives the same distribution.
    a00, a01 = cos, cos * tan - sin
    a10, a11 = sin, sin * tan + cos
    centre = (size - 1) / 2.0
    b0 = centre - a00 * centre - a01 * centre
    b1 = centre - a10 * centre - a11 * centre
    matrix = tf.stack([a00, a01, b0, a10, a11, b1, 0.0, 0.0])[None]
    transformed = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=matrix,
        output_shape=[size, size],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=_FILL_MODES[fill_mode],
    )
    return transformed[0]


def color_jitter(
    image: tf.Tensor, seed: tf.Tensor, brightness: float, contrast: float, saturation: float, hue: float
) -> tf.Tensor:
    """Brightness, contrast, saturation and hue in that order; tf.image's colour ops expect 0..1."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    unit = image / 255.0
    if brightness > 0:
        unit = tf.clip_by_value(tf.image.stateless_random_brightness(unit, brightness, seeds[0]), 0.0, 1.0)
    if contrast > 0:
        contrasted = tf.image.stateless_random_contrast(unit, 1.0 - contrast, 1.0 + contrast, seeds[1])
        unit = tf.clip_by_value(contrasted, 0.0, 1.0)  # the HSV ops below assume 0..1
    if saturation > 0:
        unit = tf.image.stateless_random_saturation(
            unit, max(0.0, 1.0 - saturation), 1.0 + saturation, seeds[2]
        )
    if hue > 0:
        unit = tf.image.stateless_random_hue(unit, hue, seeds[3])
    return unit * 255.0


def grayscale(image: tf.Tensor, seed: tf.Tensor, prob: float) -> tf.Tensor:
    gray = tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])
    return tf.where(_coin(seed, prob), gray, image)


def _gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-(offsets**2) / (2.0 * sigma**2))
    weights /= tf.reduce_sum(weights)
    vertical = tf.tile(tf.reshape(weights, [-1, 1, 1, 1]), [1, 1, 3, 1])
    horizontal = tf.reshape(vertical, [1, -1, 3, 1])
    # reflect padding keeps the borders from darkening the way zero padding would
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    blurred = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, horizontal, [1, 1, 1, 1], "VALID")
    return blurred[0]


def blur(image: tf.Tensor, seed: tf.Tensor, prob: float, sigma: tuple[float, float]) -> tf.Tensor:
    """Gaussian blur with probability `prob`, sigma uniform in the range (pixels)."""
    size = image.shape[0]
    radius = max(1, min(math.ceil(3 * sigma[1]), size - 1))  # a static kernel size
    seeds = tf.random.experimental.stateless_split(seed, 2)
    sigma_value = _uniform(seeds[1], *sigma)
    return tf.cond(_coin(seeds[0], prob), lambda: _gaussian_blur(image, sigma_value, radius), lambda: image)


def erase(
    image: tf.Tensor, seed: tf.Tensor, prob: float, area: tuple[float, float], ratio: tuple[float, float]
) -> tf.Tensor:
    """Random erasing: with probability `prob`, one box of random area/aspect filled with noise."""
    size = image.shape[0]
    seeds = tf.random.experimental.stateless_split(seed, 6)
    fraction = _uniform(seeds[1], *area)
    aspect = _log_uniform(seeds[2], *ratio)
    height = tf.clip_by_value(tf.round(tf.sqrt(fraction / aspect) * size), 1.0, size)
    width = tf.clip_by_value(tf.round(tf.sqrt(fraction * aspect) * size), 1.0, size)
    top = tf.floor(_uniform(seeds[3], 0.0, 1.0) * (size - height + 1))
    left = tf.floor(_uniform(seeds[4], 0.0, 1.0) * (size - width + 1))
    pixels = tf.range(size, dtype=tf.float32)
    rows = (pixels >= top) & (pixels < top + height)
    cols = (pixels >= left) & (pixels < left + width)
    inside = (rows[:, None] & cols[None, :])[:, :, None] & _coin(seeds[0], prob)
    noise = _uniform(seeds[5], 0.0, 255.0, tuple(image.shape))
    return tf.where(inside, noise, image)


def augment_image(image: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """All enabled ops in a fixed order; float32 [S, S, 3] in 0..255 out (identity when all are off)."""
    image = tf.cast(image, tf.float32)
    shape = image.shape
    seeds = tf.random.experimental.stateless_split(seed, 7)
    if cfg.flip is True:  # new_class flips in the pipeline, where the label is (flip_as_new_class)
        image = flip(image, seeds[0])
    if cfg.random_resized_crop:
        image = random_resized_crop(image, seeds[1], cfg.crop_scale, cfg.crop_ratio)
    if cfg.rotation > 0 or cfg.shear > 0:
        image = affine(image, seeds[2], cfg.rotation, cfg.shear, cfg.fill_mode)
    if cfg.brightness > 0 or cfg.contrast > 0 or cfg.saturation > 0 or cfg.hue > 0:
        image = color_jitter(image, seeds[3], cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    if cfg.grayscale_prob > 0:
        image = grayscale(image, seeds[4], cfg.grayscale_prob)
    if cfg.blur_prob > 0:
        image = blur(image, seeds[5], cfg.blur_prob, cfg.blur_sigma)
    if cfg.erasing_prob > 0:
        image = erase(image, seeds[6], cfg.erasing_prob, cfg.erasing_area, cfg.erasing_ratio)
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), shape)
