"""Photos for the synthetic data set (stage 0): one individual's template under this sighting's conditions.

Everything here is drawn afresh per photo (colour, light, pose, water line, splashes, sea, sky, blur, grain),
so the only thing two photos of an animal share is its template's shape and pattern.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tfwhale.synthetic.identity import LOOKS, Identity, Template

MAX_ROTATION = 0.2  # radians; the camera is rarely far off level
MAX_SHEAR = 0.1  # a cheap stand-in for perspective
MAX_STRETCH = 0.1  # aspect change from the viewing angle
FRAME_RATIOS = ((3, 2), (4, 3), (16, 9))  # landscape camera formats, long side first


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: tuple[int, int]) -> np.ndarray:
    """Noise in [-1, 1] from a (columns, rows) grid of random values, smoothly upsampled to width x height."""
    coarse = rng.uniform(-1, 1, (max(2, cells[1]), max(2, cells[0]))).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, "F").resize((width, height), Image.BICUBIC))


def _blur(values: np.ndarray, radius: float) -> np.ndarray:
    image = Image.fromarray((values * 255).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(image, dtype=np.float32) / 255


def _sea_and_sky(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Float RGB background: a sky band above a random horizon (often off-frame) over a rippled sea."""
    horizon = rng.uniform(-0.4, 0.45) * height
    rows = np.arange(height, dtype=np.float32)[:, None, None]
    sea = rng.uniform((10, 40, 55), (60, 105, 140))
    # Keep the sea between blue and green-grey: never purple.
    sea[0], sea[2] = min(sea[0], 0.7 * sea[1]), np.clip(sea[2], sea[1] - 15, sea[1] + 40)
    distance = np.clip((rows - horizon) / (height - horizon), 0, 1)  # 0 at the horizon, 1 at the bottom
    swell = _smooth_noise(rng, width, height, (width // 96, height // 48))[..., None]
    ripples = _smooth_noise(rng, width, height, (width // 24, height // 6))[..., None]
    texture = 1 + rng.uniform(0.05, 0.15) * swell + rng.uniform(0.05, 0.2) * ripples
    water = sea * (1.25 - 0.45 * distance) * texture
    sky_top = rng.uniform(110, 200) + rng.uniform((-25, -8, 8), (-5, 5, 35))
    sky = sky_top + (rows / max(horizon, 1)) * rng.uniform(10, 40)
    return np.where(rows < horizon, sky, water).astype(np.float32)


def _water_line(rng: np.random.Generator, species: str, height: int, width: int):
    """(visible, foam) in template pixels: what stays above a wavy water line, and the froth along it."""
    low, high = LOOKS[species].waterline
    xs = np.arange(width, dtype=np.float32) / width
    wave = rng.uniform(0, 0.02) * np.sin(2 * np.pi * (rng.uniform(1, 4) * xs + rng.random()))
    above = rng.uniform(low, high) + wave[None, :] - np.arange(height, dtype=np.float32)[:, None] / width
    visible = np.clip(above * width / 2 + 0.5, 0, 1)
    band = np.clip(1 - np.abs(above) / rng.uniform(0.01, 0.03), 0, 1)
    froth = _smooth_noise(rng, width, height, (width // 6, height // 6)) * 2 + rng.uniform(-0.5, 0.8)
    return visible, band * np.clip(froth, 0, 1)


def _splashes(rng: np.random.Generator, species: str, height: int, width: int) -> np.ndarray:
    """Alpha of white water over the animal: streams off a raised fluke, now and then a splash anywhere."""
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    streams = int(rng.integers(0, 4)) if species == "humpback_whale" else 0
    for _ in range(streams):
        x, y = rng.uniform(0.1, 0.9), rng.uniform(0.15, 0.3)
        draw.ellipse([v * width for v in (x - 0.015, y, x + 0.015, y + rng.uniform(0.1, 0.25))], fill=130)
    if rng.random() < 0.25:
        x, y, r = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.4), rng.uniform(0.04, 0.1)
        splash = [v * width for v in (x - r, y - 0.7 * r, x + r, y + 0.7 * r)]
        draw.ellipse(splash, fill=int(rng.integers(120, 220)))
    return np.asarray(layer.filter(ImageFilter.GaussianBlur(width / 150)), dtype=np.float32) / 255


def _skin(identity: Identity, template: Template, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Float RGB of the animal under this photo's light (template pixels), and a matching foam white."""
    look = LOOKS[identity.species]
    height, width = template.mask.shape
    body, mark = np.array(look.body_rgb, np.float32), np.array(look.mark_rgb, np.float32)
    mark = body + (mark - body) * rng.uniform(0.65, 1.0)  # haze and backlight flatten the contrast
    exposure = rng.uniform(0.6, 1.35) * rng.uniform(0.88, 1.12, 3)  # brightness and white balance
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) / width
    sun = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.1, 0.5) * ((xs - 0.5) * math.cos(sun) + (ys - 0.25) * math.sin(sun))
    light *= 1 + 0.06 * _smooth_noise(rng, width, height, (width // 8, height // 8))
    pattern = template.pattern[..., None]
    rgb = (body * (1 - pattern) + mark * pattern) * light[..., None] * exposure + rng.uniform(-15, 15)
    return rgb, float(min(255.0, 235 * exposure.mean()))


def _animal_layer(identity: Identity, template: Template, rng: np.random.Generator):
    """(RGBA float image in template pixels, alpha of the visible animal alone) for one photo."""
    height, width = template.mask.shape
    rgb, white = _skin(identity, template, rng)
    visible, foam = _water_line(rng, identity.species, height, width)
    animal = template.mask * visible
    foam *= np.clip(_blur(template.mask, width / 40) * 4, 0, 1)  # froth only where the animal breaks water
    water = np.maximum(foam, _splashes(rng, identity.species, height, width) * animal)
    alpha = water + animal * (1 - water)
    mixed = white * water[..., None] + rgb * (animal * (1 - water))[..., None]
    return np.dstack([mixed / np.maximum(alpha, 1e-6)[..., None], alpha * 255]), animal


def _frame_size(rng: np.random.Generator, long_side: int, pose_noise: bool) -> tuple[int, int]:
    ratio = FRAME_RATIOS[int(rng.integers(0, len(FRAME_RATIOS)))] if pose_noise else FRAME_RATIOS[0]
    return long_side, round(long_side * ratio[1] / ratio[0])


def _pose(rng, template_size, frame_size, mirrored: bool, pose_noise: bool) -> np.ndarray:
    """Forward 3x3 affine from template to frame pixels; the template's corners stay inside the frame."""
    (tw, th), (fw, fh) = template_size, frame_size
    angle, shear, stretch, flip = 0.0, 0.0, 1.0, 1.0
    if pose_noise:
        angle, shear = rng.uniform(-MAX_ROTATION, MAX_ROTATION), rng.uniform(-MAX_SHEAR, MAX_SHEAR)
        stretch = 1 + rng.uniform(-MAX_STRETCH, MAX_STRETCH)
        flip = -1.0 if mirrored and rng.random() < 0.5 else 1.0
    ca, sa = math.cos(angle), math.sin(angle)
    linear = np.array([[ca, -sa], [sa, ca]]) @ np.array([[1, shear], [0, 1]]) @ np.diag([stretch * flip, 1.0])
    span_w, span_h = np.ptp(linear @ np.array([[-tw, tw, tw, -tw], [-th, -th, th, th]]) / 2, axis=1)
    area = rng.uniform(0.3, 0.65) if pose_noise else 0.45  # of the template; the animal's box is smaller
    scale = min(math.sqrt(area * fw * fh / (span_w * span_h)), 0.96 * fw / span_w, 0.96 * fh / span_h)
    half_w, half_h = scale * span_w / 2, scale * span_h / 2
    centre = (fw / 2, fh / 2)
    if pose_noise:
        centre = (rng.uniform(half_w, fw - half_w), rng.uniform(half_h, fh - half_h))
    forward = np.eye(3)
    forward[:2, :2] = scale * linear
    forward[:2, 2] = np.array(centre) - scale * linear @ np.array([tw / 2, th / 2])
    return forward


def _box(animal: np.ndarray, forward: np.ndarray, frame_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel box (x1, y1, x2, y2) around the visible animal once placed in the frame."""
    ys, xs = np.nonzero(animal > 0.5)
    corners = forward[:2, :2] @ np.stack([xs, ys]) + forward[:2, 2:3]
    return (
        max(0, math.floor(corners[0].min())),
        max(0, math.floor(corners[1].min())),
        min(frame_size[0], math.ceil(corners[0].max()) + 1),
        min(frame_size[1], math.ceil(corners[1].max()) + 1),
    )


def render_photo(
    identity: Identity, template: Template, rng: np.random.Generator, long_side: int, pose_noise: bool = True
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One RGB photo of the individual and the true box (x1, y1, x2, y2) of its visible part, in pixels.

    pose_noise=False keeps the animal level, unmirrored, centred, at a fixed size in a 3:2 frame (light,
    water and background still vary): a control that separates identity from pose.
    """
    frame_size = _frame_size(rng, long_side, pose_noise)
    background = _sea_and_sky(rng, *frame_size)
    rgba, animal = _animal_layer(identity, template, rng)
    mirrored = LOOKS[identity.species].mirrored
    forward = _pose(rng, animal.shape[::-1], frame_size, mirrored, pose_noise)
    layer = Image.fromarray(np.clip(rgba, 0, 255).astype(np.uint8), "RGBA")
    inverse = tuple(np.linalg.inv(forward)[:2].ravel())
    layer = layer.transform(frame_size, Image.AFFINE, inverse, resample=Image.BILINEAR)
    frame = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB").convert("RGBA")
    frame.alpha_composite(layer)
    photo = frame.convert("RGB").filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2) * long_side / 384))
    grain = rng.normal(0, rng.uniform(1, 4), (frame_size[1], frame_size[0], 1))
    pixels = np.clip(np.asarray(photo, np.float32) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB"), _box(animal, forward, frame_size)
