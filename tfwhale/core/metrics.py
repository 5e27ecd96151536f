"""Scoring for the predict stage: MAP@5 exactly as Kaggle's Happywhale leaderboard computes it."""

from __future__ import annotations

from collections.abc import Sequence


def average_precision_at_k(truth: str, predicted: Sequence[str], k: int = 5) -> float:
    """1/rank of the first correct label among the first k distinct predictions, else 0.

    Kaggle counts a repeated label once (a repeat never scores at a later rank),
    so duplicates are dropped before ranking.
    """
    seen: list[str] = []
    for label in predicted:
        if label not in seen:
            seen.append(label)
        if len(seen) == k:
            break
    for rank, label in enumerate(seen, start=1):
        if label == truth:
            return 1.0 / rank
    return 0.0


def map_at_k(truths: Sequence[str], predictions: Sequence[Sequence[str]], k: int = 5) -> float:
    """Mean of average_precision_at_k over queries; 0.0 for no queries."""
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} truths but {len(predictions)} predictions")
    if not truths:
        return 0.0
    total = sum(average_precision_at_k(t, p, k) for t, p in zip(truths, predictions, strict=True))
    return total / len(truths)
