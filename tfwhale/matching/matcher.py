"""The matcher interface the query path uses, and SIFT, its offline default (no weights to download).

A learned matcher (ALIKED or SuperPoint + LightGlue, LoFTR) plugs in by implementing the same two
methods where its weights are available; everything above it (shortlists, aggregation, calibration)
sees only LocalFeatures and PairMatch.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from tfwhale.contracts.local_features import LocalFeatures
from tfwhale.matching.features import SiftSettings, extract_sift
from tfwhale.matching.pairs import PairMatch, PairSettings, match_pair


class Matcher(Protocol):
    """Features of one crop, and the verified matches of two photos' features."""

    name: str

    def extract(self, rgb: np.ndarray) -> LocalFeatures: ...

    def match(self, query: LocalFeatures, gallery: LocalFeatures) -> PairMatch: ...


class SiftMatcher:
    """OpenCV SIFT -> uint8 RootSIFT, ratio test + mutual check + RANSAC verification."""

    name = "sift"

    def __init__(self, features: SiftSettings | None = None, pairs: PairSettings | None = None) -> None:
        self.features = features or SiftSettings()
        self.pairs = pairs or PairSettings()

    def extract(self, rgb: np.ndarray) -> LocalFeatures:
        return extract_sift(rgb, self.features)

    def match(self, query: LocalFeatures, gallery: LocalFeatures) -> PairMatch:
        return match_pair(query, gallery, self.pairs)
