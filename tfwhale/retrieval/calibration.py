"""Stage 3 (predict) new_individual threshold: carry an OOF-tuned threshold onto the test similarity scale.

OOF queries are embedded by one fold model; test queries by the mean of all fold models, whose cosine
similarities run higher (averaging cancels each model's own noise). The threshold is moved so that it
says new_individual for the same share of test queries as it would on the one-model scale, measured on
the test queries themselves (no labels needed): a quantile mapping between the two scales.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfwhale.retrieval.threshold import ThresholdResult


def quantile_map(threshold: float, single_top1: np.ndarray, averaged_top1: np.ndarray) -> float:
    """The averaged-scale threshold that many queries fall at or below as fall below `threshold` singly.

    single_top1: the test queries' best similarity under each single fold model (pooled);
    averaged_top1: their best similarity with fold-averaged embeddings (what the test ranking uses).
    """
    single = np.asarray(single_top1, dtype=np.float64)
    averaged = np.sort(np.asarray(averaged_top1, dtype=np.float64))
    if not len(single) or not len(averaged):
        return float(threshold)
    new_count = round(float(np.mean(single <= threshold)) * len(averaged))
    if new_count == 0:  # none said new on one scale: none on the other
        return float(min(threshold, np.nextafter(averaged[0], -np.inf)))
    if new_count == len(averaged):
        return float(max(threshold, averaged[-1]))
    return float((averaged[new_count - 1] + averaged[new_count]) / 2)


def calibrate(tuned: ThresholdResult, single_top1: np.ndarray, averaged_top1: np.ndarray) -> ThresholdResult:
    """The tuned result with its threshold (and per-species ones) mapped onto the averaged scale."""
    per_species = {
        name: quantile_map(value, single_top1, averaged_top1) for name, value in tuned.per_species.items()
    }
    return dataclasses.replace(
        tuned, threshold=quantile_map(tuned.threshold, single_top1, averaged_top1), per_species=per_species
    )
