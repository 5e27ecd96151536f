"""Query path: ranked individuals + the gallery's threshold policy -> answer rows; the only place that
decides where new_individual goes in a top 5 (predict's test and OOF passes, identify, the catalogue app)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tfwhale.contracts.gallery_manifest import ThresholdPolicy
from tfwhale.retrieval.ranking import Ranked
from tfwhale.retrieval.threshold import insert_new_individual


@dataclass(frozen=True)
class QueryAnswer:
    """One query's answer: up to 5 labels (new_individual among them where the policy puts it)."""

    labels: list[str]
    similarities: list[float | None]  # per label; None for new_individual
    species: list[str | None]
    threshold: float  # what this query was held to (its best individual's species' threshold)


def answer_rows(
    ranked: Ranked, policy: ThresholdPolicy, species_of: Mapping[str, str], n: int = 5
) -> list[QueryAnswer]:
    """Each query's top n with new_individual inserted at its threshold (per species when tuned so)."""
    rows = []
    for labels, scores in zip(ranked.labels, ranked.scores, strict=True):
        threshold = policy.threshold_for(species_of.get(labels[0]) if labels else None)
        top = insert_new_individual([labels], [scores], threshold, n)[0]
        score_of = dict(zip(labels, scores, strict=True))
        similarities = [None if (s := score_of.get(label)) is None else float(s) for label in top]
        rows.append(QueryAnswer(top, similarities, [species_of.get(label) for label in top], threshold))
    return rows


def answer_labels(
    ranked: Ranked, policy: ThresholdPolicy, species_of: Mapping[str, str], n: int = 5
) -> list[list[str]]:
    """Just the labels of answer_rows: a submission's predictions."""
    return [row.labels for row in answer_rows(ranked, policy, species_of, n)]


def best_species(ranked: Ranked, species_of: Mapping[str, str]) -> list[str | None]:
    """A query's species: that of its best-matching gallery individual."""
    return [species_of.get(labels[0]) if labels else None for labels in ranked.labels]


def top1(ranked: Ranked) -> Sequence[float]:
    return [s[0] if s else -1.0 for s in ranked.scores]
