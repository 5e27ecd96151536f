"""The catalogue's verdict in words (serve): what the scores are, how far the new-individual threshold can
be trusted (the gallery's ThresholdPolicy as predict or the gallery command wrote it), and why the answer
leans towards a known individual or a new one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tfwhale.contracts.gallery_manifest import ThresholdPolicy
from tfwhale.core.labels import NEW_INDIVIDUAL

if TYPE_CHECKING:
    from tfwhale.serve.candidates import Result

# Known/new ROC AUC of the threshold's tuning -> how well the threshold can split them (upper bounds).
SEPARATION = (
    (0.6, "known and new barely separate: treat the verdict as a guess"),
    (0.75, "known and new separate weakly: check the candidates by eye"),
    (0.9, "known and new separate fairly well"),
    (1.01, "known and new separate well"),
)


@dataclass(frozen=True)
class Verdict:
    score_name: str  # what the candidates' scores are: "P(same)" (calibrated) or "similarity"
    why: str  # one sentence: the best score against the threshold, and how far the threshold holds
    reliability: str  # the threshold's source and separation, in words
    warnings: tuple[str, ...]  # the policy's own warnings, as written
    unreliable: bool  # AUC under 0.75, no AUC recorded, or warnings


def separation_words(auc: float | None) -> str:
    if auc is None:
        return "never tuned on this gallery: how well it splits known from new is unknown"
    return next(words for bound, words in SEPARATION if auc < bound)


def explain(
    labels: list[str],
    scores: list[float | None],
    threshold: float,
    policy: ThresholdPolicy | None,
    fused: bool,
) -> Verdict:
    """The verdict on one answer: labels and scores as the candidates show them (new_individual's is
    None), the threshold it was held to, the policy that gave it, and whether scores are fused P."""
    score_name = "P(same)" if fused else "similarity"
    real = [s for label, s in zip(labels, scores, strict=True) if label != NEW_INDIVIDUAL and s is not None]
    auc = None if policy is None else policy.separation_auc
    source = "unknown" if policy is None else policy.source
    warnings = () if policy is None else tuple(policy.warnings)
    if auc is None:
        origin = f"set by {source}, no known/new AUC recorded"
    else:
        origin = f"set by {source}, known/new AUC {auc:.2f}"
    reliability = f"threshold {threshold:.3f} ({origin}): {separation_words(auc)}"
    best = f"best {score_name} {real[0]:.3f}" if real else ""
    if not real:
        why = f"no gallery individual to compare with: new (threshold {threshold:.3f}, {origin})"
    elif labels and labels[0] == NEW_INDIVIDUAL:
        why = f"leans new: {best} is not above the threshold {threshold:.3f} ({origin})"
    else:
        margin = real[0] - threshold
        why = f"leans known: {best} is above the threshold {threshold:.3f} by {margin:.3f} ({origin})"
    if auc is not None:
        why += f": {separation_words(auc).split(':')[0]}"
    return Verdict(score_name, why, reliability, warnings, auc is None or auc < 0.75 or bool(warnings))


def of_result(result: Result) -> Verdict:
    """The verdict on a catalogue answer."""
    labels = [c.label for c in result.candidates]
    scores = [c.similarity for c in result.candidates]
    return explain(labels, scores, result.threshold, result.policy, result.fused)
