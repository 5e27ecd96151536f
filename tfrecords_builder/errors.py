"""build-tfrecords input problems: fatal errors, and per-image rejects written to rejects.csv."""

from __future__ import annotations

from dataclasses import dataclass

REJECT_COLUMNS = ("image", "row", "field", "reason")


class BuildInputError(ValueError):
    """The input cannot be built at all; the message names the file, row and field at fault."""


class BuildRunError(RuntimeError):
    """The build started but could not finish (e.g. its Beam pipeline failed); the same command resumes."""


@dataclass(frozen=True)
class Reject:
    """One image that will not be built.

    `row` is the 1-based line in the source CSV counting the header as line 1 (the first data row is 2),
    or None when the image did not come from a CSV row (e.g. a listed test folder).
    """

    image: str
    row: int | None
    field: str
    reason: str
