"""The catalogue app's JSON request bodies (serve): pydantic models that bound and check every field."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from tfwhale.contracts.individual_id import MAX_SPECIES_LENGTH, check_species, control_problem

MAX_NOTE = 2000
MAX_REVIEWER = 100
MAX_SCORES = 50  # a result shows 5 candidates; the list is a record of them, not a data store


def _one_line(text: str) -> str:
    problem = control_problem(text)
    if problem:
        raise ValueError(problem)
    return text


def single_line(value: object) -> str:
    """Text for one line of a message or a CSV cell: control characters replaced by spaces."""
    return "".join(" " if control_problem(char) else char for char in str(value))


class Score(BaseModel):
    """One candidate a reviewer was shown."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    label: str = Field(max_length=200)
    similarity: float | None = None


class DecideBody(BaseModel):
    """POST /api/decide: what the page sends for a confirm, register or unresolved decision."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    photo: str = Field(pattern=r"^[0-9a-f]{64}$")
    action: Literal["confirm", "register", "unresolved", "reassign"]
    individual: str = Field("", max_length=200)
    note: str = Field("", max_length=MAX_NOTE)
    reviewer: Annotated[str, AfterValidator(_one_line)] = Field("", max_length=MAX_REVIEWER)
    species: Annotated[str, AfterValidator(check_species)] = Field("", max_length=MAX_SPECIES_LENGTH)
    scores: list[Score] = Field(default_factory=list, max_length=MAX_SCORES)


class UndoBody(BaseModel):
    """POST /api/undo: take back one decision (a merge or a split: all of it)."""

    model_config = ConfigDict(extra="forbid")
    decision: int = Field(ge=1)
    note: str = Field("", max_length=MAX_NOTE)
    reviewer: Annotated[str, AfterValidator(_one_line)] = Field("", max_length=MAX_REVIEWER)


class MergeBody(BaseModel):
    """POST /api/merge: `merged` and `kept` are one animal; `kept` stays."""

    model_config = ConfigDict(extra="forbid")
    merged: str = Field(min_length=1, max_length=200)
    kept: str = Field(min_length=1, max_length=200)
    note: str = Field("", max_length=MAX_NOTE)
    reviewer: Annotated[str, AfterValidator(_one_line)] = Field("", max_length=MAX_REVIEWER)


class SplitBody(BaseModel):
    """POST /api/split: these photos of `individual` are of `other` (a new id, or an existing one)."""

    model_config = ConfigDict(extra="forbid")
    individual: str = Field(min_length=1, max_length=200)
    photos: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(min_length=1, max_length=10_000)
    other: str = Field(min_length=1, max_length=200)
    note: str = Field("", max_length=MAX_NOTE)
    species: Annotated[str, AfterValidator(check_species)] = Field("", max_length=MAX_SPECIES_LENGTH)
    reviewer: Annotated[str, AfterValidator(_one_line)] = Field("", max_length=MAX_REVIEWER)


def first_error(err: ValidationError) -> str:
    """One line for a refused body: the first problem, with the field it is in."""
    problem = err.errors(include_url=False)[0]
    where = ".".join(str(part) for part in problem["loc"]) or "body"
    message = str(problem["msg"]).removeprefix("Value error, ")
    return f"request body: {where}: {message}"
