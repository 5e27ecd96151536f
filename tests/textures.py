"""Test helper: textured photos where SIFT finds plenty of distinctive corners (an animal's markings)."""

from __future__ import annotations

import cv2
import numpy as np


def texture(seed: int, size: int = 320) -> np.ndarray:
    """An RGB uint8 image of random blobs and lines: plenty of distinctive corners."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 128, np.uint8)
    for _ in range(60):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.circle(image, centre, int(rng.integers(3, 18)), colour, -1)
        end = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.line(image, centre, end, colour, int(rng.integers(1, 4)))
    return image
