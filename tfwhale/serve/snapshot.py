"""The catalogue engine's searched gallery as one search sees it (serve), and merged ids answered once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfwhale.query.local import LocalRerankPath
from tfwhale.retrieval import ranking


@dataclass
class Snapshot:
    """One search's view of the gallery: rows appended or relabelled meanwhile are not in it."""

    matrix: np.ndarray
    codes: np.ndarray
    names: list[str]
    rows: dict[str, list[int]]
    photos: list[str | None]
    merges: dict[str, str]
    local: LocalRerankPath | None = None  # the re-rank with predict's rows under their current ids
    kept: np.ndarray | None = None  # rows searched, when some are left out
    sides: np.ndarray | None = None  # int16 per row: its photo's side code (engine's side codes; 0: unknown)


def merged(ranked: ranking.Ranked, merges: dict[str, str], n: int) -> ranking.Ranked:
    """A ranking with merged-away ids answered by the id they were merged into, each id once (its best),
    n at most."""
    if not merges:
        return ranked
    labels, scores = [], []
    for row_labels, row_scores in zip(ranked.labels, ranked.scores, strict=True):
        seen, kept_labels, kept_scores = set(), [], []
        for label, score in zip(row_labels, row_scores, strict=True):
            label = merges.get(label, label)
            if label not in seen:
                seen.add(label)
                kept_labels.append(label)
                kept_scores.append(score)
        labels.append(kept_labels[:n])
        scores.append(kept_scores[:n])
    return ranking.Ranked(labels, scores)
