"""Re-rank one query's individuals by local evidence: shortlist, verify, calibrate, fuse (the study's method).

What benchmarks/quality_local.py chose on nyala-dev (5 seeds): the pairs verified are the union of the
embedding's top-K individuals (each one's best-voted photos) and LNBNN's top-M photos over the whole
gallery; each individual scores its best photo (max) by cosine, verified inliers and LNBNN votes; each of
the three scores becomes P(same individual) by an isotonic calibration fitted leave-one-out over the
gallery itself (never a self-pair), and the fused score is their mean.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tfwhale.contracts.local_features import FeatureSet, LocalFeatures
from tfwhale.matching.aggregate import (
    RerankSettings,
    best_photos_of_each,
    per_individual,
    top_individual_photos,
    top_photos,
)
from tfwhale.matching.fusion import ScoreCalibration, fit_calibration, fuse
from tfwhale.matching.grown import GrownIndex, merge_neighbours
from tfwhale.matching.lnbnn import LnbnnIndex, Neighbours, lnbnn_votes
from tfwhale.matching.pairs import PairMatch, PairSettings, match_pairs

OTHER_SIDE_LAST = 1e9  # subtracted from the votes of photos of another side, for choosing what to verify
LNBNN_SEARCH = 12  # neighbours searched per descriptor: a left-out photo's own ones drop out of them
EVIDENCE = ("cosine", "inliers", "votes")


@dataclass(frozen=True)
class Calibrations:
    """P(same individual) of each kind of evidence; fused = their mean."""

    cosine: ScoreCalibration
    inliers: ScoreCalibration
    votes: ScoreCalibration

    def fused(self, cosine: np.ndarray, inliers: np.ndarray, votes: np.ndarray) -> np.ndarray:
        return fuse(self.cosine(cosine), self.inliers(inliers), self.votes(votes))

    def to_dict(self) -> dict[str, dict[str, list[float]]]:
        return {name: getattr(self, name).to_dict() for name in EVIDENCE}

    @classmethod
    def from_dict(cls, data: dict) -> Calibrations:
        return cls(*(ScoreCalibration.from_dict(data[name]) for name in EVIDENCE))


class LocalGallery:
    """A gallery's photo features with their individuals (int codes), and one LNBNN index over them; with
    grown photos (the catalogue app's, rows len(features)... after the gallery's own), their own small
    indexes (matching.grown), searched with the gallery's as if one."""

    def __init__(self, features: FeatureSet, photo_individual: np.ndarray, n_individuals: int) -> None:
        if len(features) != len(photo_individual):
            raise ValueError(f"{len(features)} feature photos but {len(photo_individual)} individuals")
        self.features = features
        self.photo_individual = np.asarray(photo_individual, np.int64)
        self.n_individuals = int(n_individuals)
        self.index = LnbnnIndex(features)
        self.grown: GrownIndex | None = None

    def __len__(self) -> int:
        return len(self.features) + (len(self.grown) if self.grown is not None else 0)

    def photo(self, row: int) -> LocalFeatures:
        """Row `row`'s features: the gallery's own photos, then the grown ones."""
        base = len(self.features)
        return self.features[row] if row < base else self.grown.features[row - base]

    def name(self, row: int) -> str:
        base = len(self.features)
        return self.features.names[row] if row < base else self.grown.features.names[row - base]

    def relabelled(self, photo_individual: np.ndarray, n_individuals: int) -> LocalGallery:
        """The same photos (and LNBNN index: it holds descriptors, not individuals) under other owners."""
        if len(photo_individual) != len(self):
            raise ValueError(f"{len(self)} feature photos but {len(photo_individual)} individuals")
        other = copy.copy(self)
        other.photo_individual = np.asarray(photo_individual, np.int64)
        other.n_individuals = int(n_individuals)
        return other

    def with_grown(
        self, grown: FeatureSet, photo_individual: np.ndarray, n_individuals: int,
        previous: LocalGallery | None = None,
    ) -> LocalGallery:  # fmt: skip
        """The gallery's own photos (their index shared) then `grown` (replacing any grown before), under
        `photo_individual` (every row's owner); `previous`'s grown indexes are reused where they fit."""
        other = copy.copy(self)
        before = previous.grown if previous is not None else None
        other.grown = GrownIndex(grown, before) if len(grown) else None
        return other.relabelled(photo_individual, n_individuals)

    def neighbours(self, query: LocalFeatures, k: int) -> Neighbours:
        """The k nearest descriptors over every index, by distance, as one index over every row."""
        found = [self.index.neighbours(query, k)]
        if self.grown is not None and len(query):
            found += self.grown.neighbours(query, k, len(self.features))
        return merge_neighbours(found, k)


@dataclass(frozen=True)
class Evidence:
    """One query's raw per-individual scores, float64 (n_individuals,) each, and per individual its best
    verified photo with the inlier matches (only individuals with at least one verified pair)."""

    cosine: np.ndarray
    inliers: np.ndarray
    votes: np.ndarray
    best: dict[int, tuple[int, PairMatch]]


def query_evidence(
    query: LocalFeatures,
    cosine: np.ndarray,
    gallery: LocalGallery,
    settings: RerankSettings,
    pairs: PairSettings,
    leave_out: int | np.ndarray | None = None,
    other_side: np.ndarray | None = None,
) -> Evidence:
    """cosine: the embedding's per-individual score (n_individuals,); leave_out: the gallery row(s) that
    are the query itself (their descriptors never vote, their pairs are never verified); other_side: bool
    (photos,), True where a photo is known to show another side than the query (a right flank for a left
    one): each individual's same-side photos are verified first, the others only to fill its quota."""
    n_photos, owner, agg = len(gallery), gallery.photo_individual, settings.aggregation
    allowed = np.ones(n_photos, bool)
    if leave_out is not None:
        allowed[leave_out] = False
    found = gallery.neighbours(query, LNBNN_SEARCH)
    votes = lnbnn_votes(found, n_photos, settings.lnbnn_k, allowed)
    voted = np.where(allowed, votes, -np.inf)
    if other_side is not None:  # votes are sums of distance ratios (tens to hundreds): this orders by side
        voted = voted - np.asarray(other_side, bool) * OTHER_SIDE_LAST
    chosen = top_individual_photos(cosine, owner, settings.shortlist_k)
    if settings.photos_per_individual:
        chosen &= best_photos_of_each(voted, owner, settings.photos_per_individual)
    chosen |= top_photos(voted, settings.shortlist_m)
    chosen &= allowed
    inliers = np.zeros(n_photos, np.float64)
    best: dict[int, tuple[int, PairMatch]] = {}
    verified = np.flatnonzero(chosen)
    matches = match_pairs(query, [gallery.photo(int(photo)) for photo in verified], pairs)
    for photo, match in zip(verified, matches, strict=True):
        inliers[photo] = match.inliers
        individual = int(owner[photo])
        if match.inliers and (individual not in best or match.inliers > best[individual][1].inliers):
            best[individual] = (int(photo), match)
    return Evidence(
        cosine=np.asarray(cosine, np.float64),
        inliers=per_individual(inliers, owner, gallery.n_individuals, agg)[0],
        votes=per_individual(votes, owner, gallery.n_individuals, agg)[0],
        best=best,
    )


@dataclass(frozen=True)
class LeaveOneOut:
    """Every gallery photo as a query against the rest: raw evidence (photos, n_individuals) per kind,
    own (the photo's individual) and scored (False where an individual has no photo left: the query's
    own, when it had one photo)."""

    cosine: np.ndarray
    inliers: np.ndarray
    votes: np.ndarray
    own: np.ndarray
    scored: np.ndarray


def leave_one_out(
    embeddings: np.ndarray,
    gallery: LocalGallery,
    settings: RerankSettings,
    pairs: PairSettings,
    tick: Callable[[], None] | None = None,
) -> LeaveOneOut:
    """embeddings: unit rows (photos, D) in the gallery's order. No photo ever meets itself."""
    n, owner = len(gallery), gallery.photo_individual
    cos = embeddings @ embeddings.T
    np.fill_diagonal(cos, -np.inf)
    cosine = per_individual(cos, owner, gallery.n_individuals, "max")
    counts = np.bincount(owner, minlength=gallery.n_individuals)
    scored = np.tile(counts, (n, 1))
    scored[np.arange(n), owner] -= 1
    scored = scored > 0
    cosine[~scored] = -1.0  # no photo left: the lowest cosine (per_individual wrote 0)
    inliers, votes = np.zeros_like(cosine), np.zeros_like(cosine)
    for photo in range(n):
        found = query_evidence(gallery.features[photo], cosine[photo], gallery, settings, pairs, photo)
        inliers[photo], votes[photo] = found.inliers, found.votes
        if tick:
            tick()
    return LeaveOneOut(cosine, inliers, votes, owner.copy(), scored)


def fit_calibrations(loo: LeaveOneOut) -> Calibrations:
    """The three isotonic calibrations over the leave-one-out pairs that have a photo to score."""
    same = np.arange(loo.cosine.shape[1])[None, :] == loo.own[:, None]
    usable = loo.scored
    return Calibrations(*(fit_calibration(getattr(loo, name)[usable], same[usable]) for name in EVIDENCE))


FUSED_DECIMALS = 9  # the fused P's calibrated steps are far coarser; float noise (1e-17) is not a rank


def fused_order(fused: np.ndarray, cosine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices best first, the fused P as answered): by the fused P to FUSED_DECIMALS, ties (same
    calibrated steps) broken by the cosine, so the answered P never rises down a ranking (adding a
    fraction of the cosine to the P did: two P's one float step apart swapped by their cosines)."""
    answered = np.round(np.asarray(fused, np.float64), FUSED_DECIMALS)
    return np.lexsort((-np.asarray(cosine, np.float64), -answered)), answered
