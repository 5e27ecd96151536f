"""Candidate presentation (serve): a search's answer as candidates with their best photos to show and
their best verified photos (what the catalogue app's result page and identify --explain draw)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tfwhale.contracts.gallery_manifest import ThresholdPolicy
from tfwhale.contracts.local_features import LocalFeatures
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.query.answers import QueryAnswer
from tfwhale.query.local import LocalRerankPath
from tfwhale.serve.snapshot import Snapshot

PHOTOS_PER_CANDIDATE = 3


@dataclass(frozen=True)
class Candidate:
    label: str  # an individual id, or new_individual
    similarity: float | None
    species: str | None
    photos: list[tuple[str | None, float]]  # (photo hash, similarity) of its best-matching photos


@dataclass
class Result:
    candidates: list[Candidate]
    threshold: float
    embedding: np.ndarray  # the query in the gallery's space, before whitening (what is stored)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    policy: ThresholdPolicy | None = None  # the policy the threshold came from (its source, AUC, warnings)
    fused: bool = False  # scores are the local re-rank's calibrated P(same individual), not similarities
    verified: dict[str, str] = field(default_factory=dict)  # label -> photo hash of its best verified photo
    answered_at: str = ""  # set when this is an answer stored at upload time, not a search just made
    features: LocalFeatures | None = None  # the photo's own local features (kept with an upload)

    @property
    def is_new(self) -> bool:
        return bool(self.candidates) and self.candidates[0].label == NEW_INDIVIDUAL

    def scores(self) -> list[dict]:
        """What a reviewer was shown, recorded with the decision."""
        return [{"label": c.label, "similarity": c.similarity} for c in self.candidates]


def result_of(
    answer: QueryAnswer, searched: np.ndarray, snap: Snapshot, query: np.ndarray,
    same_side: np.ndarray | None,
) -> Result:  # fmt: skip
    """One query's answer with each candidate's best photos among the searched rows (`searched`: the
    query prepared as the gallery's rows are; `query`: its stored embedding; `same_side`: bool per
    searched row, its photo known to show the query's side, None: the query's side is unknown)."""
    candidates = []
    for label, similarity, species in zip(answer.labels, answer.similarities, answer.species, strict=True):
        best = []
        if label in snap.rows:  # row lists and photo hashes only grow: no copy needed
            members = np.asarray(snap.rows[label])
            members = members[members < len(snap.matrix)]
            if snap.kept is not None:
                members = members[snap.kept[members]]
            sims = snap.matrix[members] @ searched  # only the candidate's photos, not the whole gallery
            best = best_photos(members, sims, snap.photos, same_side)
        candidates.append(Candidate(label, similarity, species or None, best))
    return Result(candidates, float(answer.threshold), np.asarray(query, np.float32))


def best_photos(
    members: np.ndarray, sims: np.ndarray, rows_photos: Sequence[str | None], same_side: np.ndarray | None
) -> list[tuple[str | None, float]]:
    """A candidate's photos to show, best first: where the query's side is known, the photos of that
    side come first (a left flank is compared with left flanks), then the rest by similarity.
    `rows_photos`: the searched rows' photo hashes; `same_side`: as in result_of."""
    photos = [rows_photos[row] for row in members]
    other_side = np.ones(len(members), bool) if same_side is None else ~same_side[members]
    order = np.lexsort((-sims, other_side))[:PHOTOS_PER_CANDIDATE]
    return [(photos[j], float(sims[j])) for j in order]


def verified_photos(
    result: Result, evidence, local: LocalRerankPath, row_of_name: Mapping[str, int],
    rows_photos: Sequence[str | None], grown_photos: Mapping[str, object],
) -> dict[str, str]:  # fmt: skip
    """Each candidate's photo with the most verified matches in the re-rank (what identify --explain
    draws), by its catalogue hash; candidates with no verified pair or no known photo are left out.
    A gallery photo is named by its records image name (`row_of_name`: its gallery row), a grown one by
    its hash (`grown_photos`: the catalogue's photos with a searched row)."""
    found = {}
    for candidate in result.candidates:
        best = local.best_photo(evidence, candidate.label)
        if best is None:
            continue
        row = row_of_name.get(best[0])
        if row is not None and row < len(rows_photos) and rows_photos[row] is not None:
            found[candidate.label] = rows_photos[row]
        elif row is None and best[0] in grown_photos:  # a grown photo: its hash
            found[candidate.label] = best[0]
    return found
