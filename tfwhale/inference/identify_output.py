"""Stage 3, identify's answers: one per photo (its 5 labels, or its own error), as a table or JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

EXIT_OK, EXIT_ALL_FAILED, EXIT_SOME_FAILED = 0, 1, 3


@dataclass(frozen=True)
class Answer:
    """A photo's answer; a photo that could not be read or decoded has `error` and no labels."""

    photo: str
    box: tuple | None
    labels: list[str] = field(default_factory=list)  # 5, new_individual included where it falls
    similarities: list[float | None] = field(default_factory=list)  # None for new_individual
    species: list[str | None] = field(default_factory=list)
    threshold: float | None = None
    error: str | None = None


def exit_code(results: Sequence[Answer]) -> int:
    """0 every photo answered, 3 some failed (the rest answered), 1 every photo failed."""
    failed = sum(answer.error is not None for answer in results)
    if not failed:
        return EXIT_OK
    return EXIT_ALL_FAILED if failed == len(results) else EXIT_SOME_FAILED


def _box_text(box: tuple | None) -> str:
    return "whole photo" if box is None else "box " + " ".join(f"{v:g}" for v in box)


def format_answers(results: Sequence[Answer]) -> str:
    lines = []
    for answer in results:
        if answer.error is not None:
            lines.append(f"\n{answer.photo}  ({_box_text(answer.box)})\n  error: {answer.error}")
            continue
        lines.append(
            f"\n{answer.photo}  ({_box_text(answer.box)}; new_individual threshold {answer.threshold:.4f})"
        )
        for rank, (label, similarity, species) in enumerate(
            zip(answer.labels, answer.similarities, answer.species, strict=True), start=1
        ):
            score = "" if similarity is None else f"{similarity:8.4f}"
            lines.append(f"  {rank}. {label:<24} {score:>8}  {species or ''}")
    return "\n".join(lines)


def _answer_json(a: Answer) -> dict:
    predictions = [
        {"rank": i + 1, "label": label, "similarity": s, "species": sp}
        for i, (label, s, sp) in enumerate(zip(a.labels, a.similarities, a.species, strict=True))
    ]
    return {
        "photo": a.photo,
        "box": None if a.box is None else list(a.box),
        "threshold": a.threshold,
        "predictions": predictions,
        "error": a.error,
    }


def answers_json(results: Sequence[Answer]) -> str:
    return json.dumps([_answer_json(a) for a in results], indent=2)
