"""Local features of one photo's crop: OpenCV SIFT at the matching resolution, stored as uint8 RootSIFT.

RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise each SIFT descriptor, take the square root, so
that the Euclidean distance of two descriptors compares them like the Hellinger kernel. The result has
unit L2 norm and components in [0, 1]. SIFT itself caps every component at 0.2 of the L2 norm before
its own quantisation, so no RootSIFT component exceeds ROOTSIFT_MAX; components are stored as
round(v * ROOTSIFT_SCALE), clipped to 255 (a step of 1/ROOTSIFT_SCALE). That flips only borderline
ratio tests: on 30 same-individual nyala-dev pairs the verified inliers summed 169 against 171 with
float descriptors (BENCHMARKS.md; tests/test_matching.py checks the matches of a hand-made pair).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np

from tfwhale.contracts.local_features import LocalFeatures

ROOTSIFT_MAX = 0.5  # measured: the largest component seen on real photos is ~0.33; 0.5 leaves room
ROOTSIFT_SCALE = 255.0 / ROOTSIFT_MAX


MATCH_CROPS = ("aspect", "square")
LEGACY_MATCH_CROP = "square"  # what settings stored before `crop` was recorded were made with


@dataclass(frozen=True)
class SiftSettings:
    """How features are taken: the photo's crop (its box, enlarged as the gallery's records are) is
    resized to match_size on its long side keeping its aspect ratio ("aspect"), or stretched to
    match_size x match_size ("square", as the records are); matching_image never enlarges it further,
    and SIFT keeps its max_keypoints strongest keypoints. On nyala-dev (LNBNN, 5 seeds; BENCHMARKS.md)
    512 px matched 384 px and beat 640 px; 1000 keypoints beat 500 clearly."""

    match_size: int = 512
    max_keypoints: int = 1000
    contrast_threshold: float = 0.04  # OpenCV's default; lower finds more keypoints on flat photos
    crop: str = "aspect"

    def __post_init__(self) -> None:
        if self.match_size < 32 or self.max_keypoints < 1:
            raise ValueError(f"match_size must be >= 32 and max_keypoints >= 1, got {self}")
        if self.crop not in MATCH_CROPS:
            raise ValueError(f"crop must be one of {MATCH_CROPS}, got {self.crop!r}")

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> SiftSettings:
        """The settings a gallery or feature file recorded (asdict of one). Recorded before `crop` was: the
        square crop they were made with, so that new queries are cropped as their features were."""
        unknown = set(stored) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown local-feature settings {sorted(unknown)}: made by a newer tfwhale?")
        return cls(**{"crop": LEGACY_MATCH_CROP, **stored})


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """float32 RootSIFT (n, 128) from OpenCV SIFT descriptors (n, 128)."""
    raw = np.asarray(descriptors, dtype=np.float32)
    l1 = np.maximum(raw.sum(axis=1, keepdims=True), 1e-12)
    return np.sqrt(raw / l1)


def quantise(rootsift: np.ndarray) -> np.ndarray:
    """uint8 storage of float RootSIFT (see the module docstring)."""
    return np.clip(np.rint(rootsift * ROOTSIFT_SCALE), 0, 255).astype(np.uint8)


def dequantise(stored: np.ndarray) -> np.ndarray:
    """float32 RootSIFT back from uint8 storage (unit L2 norm to within the quantisation step)."""
    return stored.astype(np.float32) / ROOTSIFT_SCALE


def matching_image(rgb: np.ndarray, match_size: int) -> np.ndarray:
    """Grey uint8 image of an RGB uint8 crop, its long side shrunk to match_size (kept if smaller)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array (h, w, 3), got {rgb.dtype} {rgb.shape}")
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    height, width = grey.shape
    scale = match_size / max(height, width)
    if scale >= 1.0:
        return grey
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)  # area: no aliasing of fine markings


def extract_sift(rgb: np.ndarray, settings: SiftSettings | None = None) -> LocalFeatures:
    """SIFT keypoints and uint8 RootSIFT descriptors of an RGB uint8 crop (see SiftSettings)."""
    settings = settings or SiftSettings()
    grey = matching_image(rgb, settings.match_size)
    sift = cv2.SIFT_create(nfeatures=settings.max_keypoints, contrastThreshold=settings.contrast_threshold)
    points, descriptors = sift.detectAndCompute(grey, None)
    if descriptors is None or not points:
        keypoints, stored = np.zeros((0, 4), np.float16), np.zeros((0, 128), np.uint8)
    else:
        # nfeatures keeps ties at the cut, so a photo can exceed it by a few: cap exactly
        order = np.argsort([-p.response for p in points], kind="stable")[: settings.max_keypoints]
        keypoints = np.asarray([(*points[i].pt, points[i].size, points[i].angle) for i in order], np.float16)
        stored = quantise(root_sift(descriptors[order]))
    return LocalFeatures(keypoints, stored, (grey.shape[1], grey.shape[0]))
