"""Individuals for the synthetic data set (stage 0): what each animal is, drawn once as a fixed template.

Identity lives only in shape and pattern (outline, notches, marks). Colour is not part of it: the photo
renderer (tfwhale.synthetic.render) picks colour and light afresh for every photo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SPECIES = ("humpback_whale", "bottlenose_dolphin", "killer_whale", "beluga")
_SUPERSAMPLE = 2  # polygons are drawn at twice the size and box-filtered down, for smooth edges


@dataclass(frozen=True)
class SpeciesLook:
    height: float  # template height / width
    body_rgb: tuple[int, int, int]
    mark_rgb: tuple[int, int, int]
    waterline: tuple[float, float]  # water level range, in template widths from the top
    notches: tuple[int, int]  # how many notches an individual has (inclusive range)
    mirrored: bool  # dorsal fins are photographed from either side: the outline shows mirrored


LOOKS = {
    "humpback_whale": SpeciesLook(0.5, (34, 34, 40), (232, 232, 228), (0.43, 0.5), (3, 5), False),
    "bottlenose_dolphin": SpeciesLook(0.75, (105, 112, 122), (205, 208, 212), (0.62, 0.72), (2, 4), True),
    "killer_whale": SpeciesLook(0.95, (22, 22, 28), (165, 168, 172), (0.84, 0.92), (1, 3), True),
    "beluga": SpeciesLook(0.45, (226, 226, 214), (120, 118, 112), (0.3, 0.38), (2, 4), False),
}


@dataclass(frozen=True)
class Identity:
    """What makes one animal itself; all numbers are in template widths."""

    species: str
    shape: tuple[float, float, float]  # species outline parameters, each in [0, 1]
    # V notches: (position along the notched edge 0-1, half width as a share of that edge, depth)
    notches: tuple[tuple[float, float, float], ...]
    # Filled ellipses (cx, cy, rx, ry, angle, value); value 1 paints marking colour, 0 paints body colour.
    marks: tuple[tuple[float, float, float, float, float, float], ...]


@dataclass(frozen=True)
class Template:
    mask: np.ndarray  # float32 (h, w), 1 inside the animal
    pattern: np.ndarray  # float32 (h, w), 1 where the marking colour shows


def _cubic(p0, p1, p2, p3, n: int = 32) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2, p3 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2, p3))
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _outline(species: str, shape: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(edge that carries the notches, rest of the outline); together a clockwise closed polygon."""
    a, b, c = shape
    if species == "humpback_whale":  # fluke from behind, trailing edge on top, median notch in the middle
        tip_l, tip_r, mid = (0.0, 0.04 + 0.07 * a), (1.0, 0.04 + 0.07 * b), 0.13 + 0.05 * c
        edge = np.concatenate(
            [
                _cubic(tip_l, (0.12, tip_l[1] + 0.1), (0.3, mid - 0.03), (0.47, mid)),
                [(0.5, mid + 0.05 + 0.03 * a)],
                _cubic((0.53, mid), (0.7, mid - 0.03), (0.88, tip_r[1] + 0.1), tip_r),
            ]
        )
        rest = np.concatenate(
            [
                _cubic(tip_r, (0.9, 0.27), (0.66, 0.3), (0.56, 0.38)),
                [(0.56, 0.5), (0.44, 0.5)],
                _cubic((0.44, 0.38), (0.34, 0.3), (0.1, 0.27), tip_l),
            ]
        )
        return edge, rest
    if species == "beluga":  # low back with a dorsal ridge, no fin
        edge = _cubic(
            (0.0, 0.32), (0.25 + 0.1 * a, 0.12 - 0.05 * b), (0.6 + 0.1 * a, 0.08 - 0.05 * b), (1, 0.3)
        )
        return edge, np.array([(1.0, 0.45), (0.0, 0.45)])
    tall = species == "killer_whale"  # else a bottlenose dolphin's falcate fin
    back, bottom = (0.78, 0.95) if tall else (0.63, 0.75)
    tip = (0.48 + 0.12 * a, 0.03 + 0.1 * (1 - b)) if tall else (0.58 + 0.14 * a, 0.04 + 0.12 * (1 - b))
    base_l, base_r = (0.3, back - 0.05), (0.6 + 0.06 * c, back - 0.03)
    lead_mid = (0.42 + 0.06 * a, 0.2) if tall else (0.45 + 0.1 * a, 0.12)
    trail_mid = (0.48 + 0.06 * a, 0.25) if tall else (0.55 + 0.08 * a, 0.2)
    edge = _cubic(tip, trail_mid, (0.5, back - 0.3), base_r)
    rest = np.concatenate(
        [
            _cubic(base_r, (0.75, back - 0.01), (0.9, back + 0.01), (1.0, back + 0.03)),
            [(1.0, bottom), (0.0, bottom)],
            _cubic((0.0, back), (0.1, back - 0.02), (0.2, back - 0.04), base_l),
            _cubic(base_l, (0.36, back - 0.3), lead_mid, tip)[:-1],
        ]
    )
    return edge, rest


def _notched(edge: np.ndarray, notches: tuple[tuple[float, float, float], ...]) -> np.ndarray:
    """Resample the edge evenly and cut V-shaped notches into it (inward is to the right of travel)."""
    seg = np.hypot(*np.diff(edge, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(seg)]) / seg.sum()
    s = np.linspace(0.0, 1.0, 240)
    points = np.stack([np.interp(s, arc, edge[:, 0]), np.interp(s, arc, edge[:, 1])], axis=1)
    tangent = np.gradient(points, axis=0)
    inward = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    inward /= np.linalg.norm(inward, axis=1, keepdims=True) + 1e-12
    depth = np.zeros_like(s)
    for where, half_width, notch_depth in notches:
        depth = np.maximum(depth, notch_depth * np.clip(1 - np.abs(s - where) / half_width, 0, 1))
    return points + inward * depth[:, None]


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float, n: int = 36) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([cx + x * ca - y * sa, cy + x * sa + y * ca], axis=1)


def _marks(species: str, rng: np.random.Generator) -> list[tuple[float, ...]]:
    """A fixed number of marks per species, so the share of marking colour hardly differs between animals."""

    def spots(n, xs, ys, rx, ry, value):
        angles = rng.uniform(0, np.pi, n)
        return [(*rng.uniform(*zip(xs, ys, rx, ry, strict=True)), angle, value) for angle in angles]

    if species == "humpback_whale":  # white patches on the dark underside
        return spots(6, (0.08, 0.92), (0.16, 0.34), (0.05, 0.09), (0.035, 0.06), 1.0)
    if species == "bottlenose_dolphin":  # pale rake scars and spots on the fin
        scars = spots(3, (0.4, 0.62), (0.2, 0.55), (0.07, 0.11), (0.018, 0.028), 1.0)
        return scars + spots(2, (0.38, 0.62), (0.25, 0.55), (0.035, 0.055), (0.035, 0.055), 1.0)
    if species == "killer_whale":  # grey saddle patch with a dark intrusion, plus fin scars
        cx, rx = rng.uniform(0.66, 0.8), rng.uniform(0.14, 0.2)
        saddle = [(cx, 0.83, rx, rng.uniform(0.05, 0.075), rng.uniform(-0.15, 0.15), 1.0)]
        intrusion = spots(1, (cx - 0.6 * rx, cx + 0.6 * rx), (0.79, 0.83), (0.03, 0.06), (0.02, 0.04), 0.0)
        return saddle + intrusion + spots(2, (0.38, 0.55), (0.25, 0.6), (0.05, 0.08), (0.014, 0.02), 1.0)
    return spots(4, (0.1, 0.9), (0.14, 0.34), (0.05, 0.1), (0.014, 0.024), 1.0) + spots(
        2, (0.15, 0.85), (0.16, 0.32), (0.025, 0.04), (0.025, 0.04), 1.0
    )


def make_identity(species: str, rng: np.random.Generator) -> Identity:
    """Draw a new individual of a species."""
    if species not in LOOKS:
        raise ValueError(f"unknown species {species!r}; expected one of {', '.join(SPECIES)}")
    low, high = LOOKS[species].notches
    count = int(rng.integers(low, high + 1))
    spacing = np.sort(rng.uniform(0.12, 0.88, count))
    notches = tuple(
        (float(where), float(rng.uniform(0.015, 0.035)), float(rng.uniform(0.03, 0.07))) for where in spacing
    )
    shape = tuple(float(v) for v in rng.uniform(0, 1, 3))
    marks = tuple(tuple(float(v) for v in mark) for mark in _marks(species, rng))
    return Identity(species, shape, notches, marks)  # type: ignore[arg-type]


def draw_template(identity: Identity, width: int) -> Template:
    """Rasterise an individual in its canonical pose, `width` pixels wide."""
    height = round(width * LOOKS[identity.species].height)
    big = (width * _SUPERSAMPLE, height * _SUPERSAMPLE)
    scale = width * _SUPERSAMPLE
    edge, rest = _outline(identity.species, identity.shape)
    polygon = np.concatenate([_notched(edge, identity.notches), rest]) * scale
    mask = Image.new("L", big, 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in polygon], fill=255)
    pattern = Image.new("L", big, 0)
    draw = ImageDraw.Draw(pattern)
    for cx, cy, rx, ry, angle, value in identity.marks:
        draw.polygon([tuple(p) for p in _ellipse(cx, cy, rx, ry, angle) * scale], fill=round(255 * value))
    pattern = pattern.filter(ImageFilter.GaussianBlur(_SUPERSAMPLE))
    mask_small = np.asarray(mask.resize((width, height), Image.BOX), dtype=np.float32) / 255
    pattern_small = np.asarray(pattern.resize((width, height), Image.BOX), dtype=np.float32) / 255
    return Template(mask_small, pattern_small * mask_small)
