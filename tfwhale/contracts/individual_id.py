"""The one rule for individual ids and species names, shared by the builder, the catalogue app and export."""

from __future__ import annotations

import unicodedata

from tfwhale.core.labels import NEW_INDIVIDUAL

MAX_ID_LENGTH = 64
MAX_SPECIES_LENGTH = 100
_PUNCTUATION = "_.-"
RULE = (
    f"1-{MAX_ID_LENGTH} letters (any alphabet), digits, '_', '.' or '-', starting with a letter or digit, "
    f"not {NEW_INDIVIDUAL!r}"
)


def _word_char(char: str) -> bool:
    """A letter, combining mark or digit of any script (é, 鯨, ١)."""
    return unicodedata.category(char)[0] in "LMN"


def _describe(char: str) -> str:
    return f"{char!r} ({unicodedata.name(char, f'U+{ord(char):04X}')})"


def id_problem(individual_id: str) -> str | None:
    """Why `individual_id` cannot name an individual, or None when it can.

    Letters of every script are allowed (Kaggle's and real catalogues' ids); punctuation is limited to
    '_', '.', '-' so an id is one URL path segment, one submission label (space separated), one file name,
    and never a spreadsheet formula or markup.
    """
    if individual_id == NEW_INDIVIDUAL:
        return f"'{NEW_INDIVIDUAL}' is reserved for the answer 'not in the gallery'"
    if not individual_id:
        return "is empty"
    if len(individual_id) > MAX_ID_LENGTH:
        return f"is {len(individual_id)} characters long; use at most {MAX_ID_LENGTH}"
    for char in individual_id:
        if not (_word_char(char) or char in _PUNCTUATION):
            return f"contains {_describe(char)}; use {RULE}"
    if not _word_char(individual_id[0]):
        return f"starts with {individual_id[0]!r}; use {RULE}"
    return None


def check_id(individual_id: str, where: str = "individual id") -> str:
    """The id stripped of surrounding spaces; ValueError naming `where` when the rule refuses it."""
    individual_id = individual_id.strip()
    problem = id_problem(individual_id)
    if problem:
        raise ValueError(f"{where} {individual_id!r} {problem}")
    return individual_id


def control_problem(text: str) -> str | None:
    """Why a one-line field (species, reviewer) cannot hold `text`: control characters (CR, LF, tab,
    NUL, ...) break CSV rows and log lines. None when it is fine."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            return f"contains the control character {_describe(char)}"
    return None


def check_species(species: str) -> str:
    """A species name stripped; ValueError when it holds control characters or is too long."""
    species = species.strip()
    problem = control_problem(species)
    if problem is None and len(species) > MAX_SPECIES_LENGTH:
        problem = f"is longer than {MAX_SPECIES_LENGTH} characters"
    if problem:
        raise ValueError(f"species {species!r} {problem}")
    return species
