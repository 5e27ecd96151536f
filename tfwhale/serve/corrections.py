"""The catalogue's corrections (serve): undo a decision, merge two individuals, split one in two.

Each is one transaction that appends rows to the history (nothing recorded is changed) and then lets
tfwhale.serve.history derive the photos' individuals again. Each returns photo -> its new individual for
the photos that moved, so that the caller can bring the searched gallery up to date.
"""

from __future__ import annotations

import sqlite3

from tfwhale.serve import history
from tfwhale.serve.store import ConflictError, Store


def undo(store: Store, decision_id: int, reviewer: str, note: str = "") -> dict[str, str | None]:
    """Take back one decision (a split: all of it); the photos go back to where the history then puts them."""
    with store.transaction() as conn:
        target = conn.execute("SELECT * FROM decisions WHERE id = ?", (decision_id,)).fetchone()
        if target is None:
            raise ConflictError(f"no decision {decision_id} in the catalogue")
        if target["action"] == "undo":
            raise ConflictError(f"decision {decision_id} is an undo: decide again instead of undoing it")
        group = [target]
        if target["batch"] is not None:
            group = conn.execute("SELECT * FROM decisions WHERE batch = ? ORDER BY id", (target["batch"],))
            group = group.fetchall()
        marks = ",".join("?" * len(group))
        ids = [row["id"] for row in group]
        if conn.execute(f"SELECT 1 FROM decisions WHERE reverts IN ({marks})", ids).fetchone():
            raise ConflictError(f"decision {decision_id} was undone already")
        batch = None
        for row in group:
            made = store.record(
                conn, row["photo_sha256"], "undo", row["individual_id"], note, reviewer,
                from_individual=row["from_individual"], reverts=row["id"], batch=batch,
            )  # fmt: skip
            if len(group) > 1 and batch is None:
                batch = made
                conn.execute("UPDATE decisions SET batch = ? WHERE id = ?", (made, made))
        if target["action"] == "merge":  # rare: every photo, so chains of merges come out right too
            changed = history.rederive(conn)
        else:
            changed = history.rederive(conn, [row["photo_sha256"] for row in group])
        for individual in {row["individual_id"] for row in group if row["action"] in ("register", "split")}:
            _drop_if_empty(conn, individual)
        return changed


def merge(store: Store, merged: str, kept: str, reviewer: str, note: str = "") -> dict[str, str | None]:
    """`merged` was `kept` all along: its photos answer as `kept` from now on (undo takes it back)."""
    with store.transaction() as conn:
        if merged == kept:
            raise ConflictError(f"cannot merge {merged} into itself")
        for individual in (merged, kept):
            _check_current(conn, individual)
        store.record(conn, None, "merge", kept, note, reviewer, from_individual=merged)
        return history.rederive(conn)


def split(
    store: Store, individual: str, photos: list[str], other: str, reviewer: str, note: str = "",
    species: str = "",
) -> dict[str, str | None]:  # fmt: skip
    """`photos` of `individual` are of another animal: they go to `other` (created when new)."""
    if not photos:
        raise ConflictError("choose the photos that go to the other individual")
    with store.transaction() as conn:
        if other == individual:
            raise ConflictError(f"the photos are of {individual} already: choose another id")
        _check_current(conn, individual)
        if store.individual(other) is None:
            row = conn.execute("SELECT species FROM individuals WHERE id = ?", (individual,)).fetchone()
            store.add_individual(conn, other, species or row["species"], "registered", reviewer)
        else:
            _check_current(conn, other)
        marks = ",".join("?" * len(photos))
        query = f"SELECT sha256, individual_id FROM photos WHERE sha256 IN ({marks})"
        now_of = dict(conn.execute(query, photos).fetchall())
        batch = None
        for photo in photos:
            if now_of.get(photo) != individual:
                raise ConflictError(f"photo {photo[:12]} is not a photo of {individual}")
            made = store.record(conn, photo, "split", other, note, reviewer, from_individual=individual,
                                batch=batch)  # fmt: skip
            if batch is None:
                batch = made
                conn.execute("UPDATE decisions SET batch = ? WHERE id = ?", (made, made))
        return history.rederive(conn, list(photos))


def _check_current(conn: sqlite3.Connection, individual: str) -> None:
    if conn.execute("SELECT 1 FROM individuals WHERE id = ?", (individual,)).fetchone() is None:
        raise ConflictError(f"individual {individual} is not in the catalogue")
    merged = history.merged_into(conn).get(individual)
    if merged is not None:
        raise ConflictError(f"individual {individual} was merged into {merged} already")


def _drop_if_empty(conn: sqlite3.Connection, individual: str) -> None:
    """An individual registered by a decision that was undone goes when no photo is left with it."""
    conn.execute(
        "DELETE FROM individuals WHERE id = ? AND origin = 'registered' AND NOT EXISTS "
        "(SELECT 1 FROM photos WHERE individual_id = ? OR record_individual = ?)",
        (individual, individual, individual),
    )
