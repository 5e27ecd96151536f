"""The catalogue's decision history (serve): the one place a photo's current individual is derived from.

Nothing in the history is overwritten. A photo starts at its records' id (gallery photos) or none
(uploads, test photos); each confirm, register, reassign or split moves it, unless an undo took that
decision back; merges that were not undone then send a merged-away id on to the id it was merged into.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

ASSIGNING = ("confirm", "register", "reassign", "split")


def undone(rows: Iterable[sqlite3.Row]) -> set[int]:
    """Ids of the decisions an undo took back."""
    return {row["reverts"] for row in rows if row["action"] == "undo" and row["reverts"] is not None}


def merged_into(conn: sqlite3.Connection) -> dict[str, str]:
    """Merged-away id -> the id it was merged into, for the merges still in force."""
    rows = conn.execute(
        "SELECT * FROM decisions WHERE action = 'merge' OR (action = 'undo' AND photo_sha256 IS NULL) "
        "ORDER BY id"
    ).fetchall()
    taken_back = undone(rows)
    return {
        row["from_individual"]: row["individual_id"]
        for row in rows
        if row["action"] == "merge" and row["id"] not in taken_back
    }


def resolve(individual: str | None, merges: dict[str, str]) -> str | None:
    """The id an individual answers to now (merges are refused into a merged-away id: no cycles)."""
    seen = set()
    while individual in merges and individual not in seen:
        seen.add(individual)
        individual = merges[individual]
    return individual


def replay(start: str | None, rows: list[sqlite3.Row]) -> str | None:
    """A photo's own id after its decisions (in id order), before merges."""
    taken_back = undone(rows)
    current = start
    for row in rows:
        if row["action"] in ASSIGNING and row["id"] not in taken_back:
            current = row["individual_id"]
    return current


def rederive(conn: sqlite3.Connection, photos: list[str] | None = None) -> dict[str, str | None]:
    """Write the current individual of `photos` (None: every photo) into photos.individual_id, in the
    caller's transaction; returns photo -> individual for the photos whose individual changed."""
    merges = merged_into(conn)
    if photos is None:
        rows = conn.execute("SELECT sha256, record_individual, individual_id FROM photos").fetchall()
        history = conn.execute("SELECT * FROM decisions WHERE photo_sha256 IS NOT NULL ORDER BY id")
    else:
        marks = ",".join("?" * len(photos))
        rows = conn.execute(
            f"SELECT sha256, record_individual, individual_id FROM photos WHERE sha256 IN ({marks})", photos
        ).fetchall()
        history = conn.execute(f"SELECT * FROM decisions WHERE photo_sha256 IN ({marks}) ORDER BY id", photos)
    by_photo: dict[str, list[sqlite3.Row]] = {}
    for row in history:
        by_photo.setdefault(row["photo_sha256"], []).append(row)
    changed = {}
    for sha, start, now_assigned in rows:
        current = resolve(replay(start, by_photo.get(sha, [])), merges)
        if current != now_assigned:
            changed[sha] = current
    conn.executemany(
        "UPDATE photos SET individual_id = ? WHERE sha256 = ?", [(v, k) for k, v in changed.items()]
    )
    return changed


def effective(rows: list[sqlite3.Row]) -> list[sqlite3.Row]:
    """The decisions of a history that are still in force (not undone, not undos themselves)."""
    taken_back = undone(rows)
    return [row for row in rows if row["action"] != "undo" and row["id"] not in taken_back]
