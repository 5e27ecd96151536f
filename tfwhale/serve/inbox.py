"""The catalogue's inbox (serve): every upload's answer kept until it is decided, and the lists to find them.

An upload's answer (the candidates and scores the query path gave, with their best photos) is stored as
it was given: reopening it needs no model and shows what the uploader saw. An answer from another
gallery (the models changed since) is not shown as if it were today's: the photo is searched again.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

import numpy as np

from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.serve import history
from tfwhale.serve.candidates import Candidate, Result
from tfwhale.serve.metadata_store import MetaFilter, matching_photos
from tfwhale.serve.store import Store, now

UNDECIDED, UNRESOLVED = "undecided", "unresolved"


@dataclass(frozen=True)
class InboxItem:
    photo: str
    name: str
    crop: str  # hash of the crop, for the thumbnail
    source: str
    added_at: str
    added_by: str
    best: str  # the answer's best known individual ('' when no answer is stored)
    similarity: float | None
    looks_new: bool  # the answer's first candidate was new_individual
    note: str  # the unresolved decision's note
    decided_at: str


def save_answer(conn: sqlite3.Connection, photo: str, gallery: str, result: Result) -> None:
    """Keep an upload's answer (in the caller's transaction); a later upload of it answers anew."""
    body = {
        "threshold": result.threshold,
        "fused": result.fused,
        "verified": result.verified,
        "candidates": [
            {"label": c.label, "similarity": c.similarity, "species": c.species, "photos": c.photos}
            for c in result.candidates
        ],
    }
    conn.execute(
        "INSERT OR REPLACE INTO answers (photo_sha256, gallery, answer, answered_at) VALUES (?, ?, ?, ?)",
        (photo, gallery, json.dumps(body), now()),
    )


def stored_answer(store: Store, photo: str, gallery: str, embedding: np.ndarray) -> tuple[Result, str] | None:
    """(the answer as given, when) if this gallery gave it; None otherwise."""
    row = store.conn.execute(
        "SELECT answer, answered_at FROM answers WHERE photo_sha256 = ? AND gallery = ?", (photo, gallery)
    ).fetchone()
    if row is None:
        return None
    body = json.loads(row["answer"])
    candidates = [
        Candidate(c["label"], c["similarity"], c["species"], [tuple(p) for p in c["photos"]])
        for c in body["candidates"]
    ]
    result = Result(candidates, float(body["threshold"]), embedding)
    result.fused, result.verified = bool(body.get("fused")), dict(body.get("verified", {}))
    return result, row["answered_at"]


def inbox(store: Store, tab: str = UNDECIDED, wanted: MetaFilter | None = None) -> list[InboxItem]:
    """Uploads no decision in force has settled (tab undecided), or the photos left unresolved, with
    their notes (tab unresolved): newest first; with a filter, only those whose metadata passes it."""
    conn = store.conn
    decided: dict[str, sqlite3.Row] = {}  # photo -> its latest decision in force
    rows = conn.execute("SELECT * FROM decisions WHERE photo_sha256 IS NOT NULL ORDER BY id").fetchall()
    for row in history.effective(rows):
        decided[row["photo_sha256"]] = row
    if tab == UNRESOLVED:
        photos = [sha for sha, row in decided.items() if row["action"] == "unresolved"]
    else:
        uploads = conn.execute("SELECT sha256 FROM photos WHERE source = 'upload' AND individual_id IS NULL")
        photos = [sha for (sha,) in uploads if sha not in decided]
    if wanted is not None and not wanted.is_empty():
        passing = matching_photos(store, wanted)
        photos = [sha for sha in photos if sha in passing]
    items = [_item(conn, sha, decided.get(sha)) for sha in photos]
    items = [item for item in items if item is not None]
    return sorted(items, key=lambda item: item.decided_at or item.added_at, reverse=True)


def _item(conn: sqlite3.Connection, photo: str, decision: sqlite3.Row | None) -> InboxItem | None:
    row = conn.execute(
        "SELECT p.name, p.crop_sha256, p.source, p.added_at, p.added_by, p.individual_id, a.answer "
        "FROM photos p LEFT JOIN answers a ON a.photo_sha256 = p.sha256 WHERE p.sha256 = ?",
        (photo,),
    ).fetchone()
    if row is None or row["individual_id"] is not None:
        return None
    shown = json.loads(row["answer"])["candidates"] if row["answer"] else []
    known = [c for c in shown if c["label"] != NEW_INDIVIDUAL]
    best, similarity = (known[0]["label"], known[0]["similarity"]) if known else ("", None)
    return InboxItem(
        photo, row["name"], row["crop_sha256"], row["source"], row["added_at"], row["added_by"], best,
        similarity, bool(shown) and shown[0]["label"] == NEW_INDIVIDUAL,
        decision["note"] if decision else "", decision["decided_at"] if decision else "",
    )  # fmt: skip
