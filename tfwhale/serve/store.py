"""The catalogue's records (serve): individuals, photos and decisions in SQLite (WAL), one transaction each.

Every change that belongs together (a decision, the photo it assigns, the individual it registers) is
committed in one transaction, so a kill -9 at any moment leaves either all of it or none of it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tfwhale.serve import history
from tfwhale.serve.schema import migrate

DB_NAME = "catalogue.sqlite"
ACTIONS = ("confirm", "register", "unresolved", "reassign")  # what decide records (see corrections)


class ConflictError(ValueError):
    """A change that collides with one already recorded (e.g. the photo was registered meanwhile)."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Photo:
    sha256: str
    source: str
    name: str
    crop_sha256: str
    box: str
    individual_id: str | None
    added_at: str
    added_by: str


class Store:
    """One connection per thread (sqlite3 objects must stay on their thread); WAL lets readers and one
    writer work at once, busy_timeout makes a second writer wait instead of failing."""

    def __init__(self, catalogue_dir: str | Path) -> None:
        self.path = str(Path(catalogue_dir) / DB_NAME)
        Path(catalogue_dir).mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        migrate(self.conn, self.path)

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a committed decision survives power loss too
            conn.execute("PRAGMA foreign_keys=ON")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- reading
    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def photo(self, sha256: str) -> Photo | None:
        row = self.conn.execute(
            "SELECT sha256, source, name, crop_sha256, box, individual_id, added_at, added_by "
            "FROM photos WHERE sha256 = ?",
            (sha256,),
        ).fetchone()
        return Photo(*row) if row else None

    def photos_of(self, individual_id: str) -> list[Photo]:
        rows = self.conn.execute(
            "SELECT sha256, source, name, crop_sha256, box, individual_id, added_at, added_by "
            "FROM photos WHERE individual_id = ? ORDER BY added_at, name",
            (individual_id,),
        ).fetchall()
        return [Photo(*row) for row in rows]

    def individual(self, individual_id: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM individuals WHERE id = ?", (individual_id,)).fetchone()

    def individual_ids(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT id FROM individuals")}

    def search_individuals(self, text: str, limit: int = 200) -> list[sqlite3.Row]:
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return self.conn.execute(
            "SELECT i.id, i.species, i.origin, COUNT(p.sha256) AS n_photos FROM individuals i "
            "LEFT JOIN photos p ON p.individual_id = i.id WHERE i.id LIKE ? ESCAPE '\\' "
            "GROUP BY i.id ORDER BY i.id LIMIT ?",
            (pattern, limit),
        ).fetchall()

    def decisions(self, photo: str | None = None, individual: str | None = None) -> list[sqlite3.Row]:
        where, args = "", ()
        if photo is not None:
            where, args = "WHERE photo_sha256 = ?", (photo,)
        elif individual is not None:  # what it was given, and what left it (reassigned, split, merged away)
            where, args = "WHERE individual_id = ? OR from_individual = ?", (individual, individual)
        return self.conn.execute(f"SELECT * FROM decisions {where} ORDER BY id", args).fetchall()

    def decided_photos(self) -> set[str]:
        """Photos with a decision in force (an undone one leaves the photo undecided again)."""
        rows = self.conn.execute("SELECT * FROM decisions WHERE photo_sha256 IS NOT NULL").fetchall()
        return {row["photo_sha256"] for row in history.effective(rows)}

    def assignments(self) -> dict[str, str]:
        """Photo hash -> its current individual, for every assigned photo."""
        rows = self.conn.execute("SELECT sha256, individual_id FROM photos WHERE individual_id IS NOT NULL")
        return {sha: individual for sha, individual in rows}

    def merges(self) -> dict[str, str]:
        """Merged-away id -> the id it was merged into, for the merges in force."""
        return history.merged_into(self.conn)

    def grown_embeddings(self) -> tuple[list[str], list[str], np.ndarray | None]:
        """(photo hashes, individual ids, embeddings) of the photos the app added to the gallery."""
        rows = self.conn.execute(
            "SELECT sha256, individual_id, embedding FROM photos "
            "WHERE individual_id IS NOT NULL AND embedding IS NOT NULL ORDER BY rowid"
        ).fetchall()
        if not rows:
            return [], [], None
        matrix = np.stack([np.frombuffer(row[2], np.float32) for row in rows])
        return [r[0] for r in rows], [r[1] for r in rows], matrix

    def gallery_photo_hashes(self) -> dict[str, str]:
        """Records image name -> photo hash of the gallery and test photos imported from the records."""
        rows = self.conn.execute("SELECT name, sha256 FROM photos WHERE source IN ('gallery', 'test')")
        return {name: sha for name, sha in rows}

    # -- writing
    def set_meta(self, conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def add_photo(self, conn: sqlite3.Connection, photo: Photo, embedding: np.ndarray | None = None) -> bool:
        """Insert a photo row unless its hash is there already; True when inserted."""
        blob = None if embedding is None else np.asarray(embedding, np.float32).tobytes()
        cursor = conn.execute(
            "INSERT OR IGNORE INTO photos (sha256, source, name, crop_sha256, box, individual_id, embedding, "
            "added_at, added_by, record_individual) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (photo.sha256, photo.source, photo.name, photo.crop_sha256, photo.box, photo.individual_id,
             blob, photo.added_at, photo.added_by, photo.individual_id),
        )  # fmt: skip
        return cursor.rowcount == 1

    def add_individual(
        self, conn: sqlite3.Connection, individual_id: str, species: str, origin: str, by: str
    ):
        conn.execute(
            "INSERT INTO individuals (id, species, origin, created_at, created_by) VALUES (?, ?, ?, ?, ?)",
            (individual_id, species, origin, now(), by),
        )

    def decide(
        self, photo: str, action: str, individual_id: str, note: str, reviewer: str, scores: list,
        embedding: np.ndarray | None = None, species: str = "",
    ) -> int:  # fmt: skip
        """Record one decision and apply it, in one transaction; ConflictError when it collides.

        confirm/register assign the photo, which must still be unassigned (two reviewers cannot assign
        one photo twice); register also creates the individual, whose id must be free; reassign moves an
        assigned photo to another existing individual. The photo's individual is then derived from its
        history (tfwhale.serve.history): the earlier decisions stay as they were.
        """
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, not {action!r}")
        with self.transaction() as conn:
            current = conn.execute("SELECT individual_id FROM photos WHERE sha256 = ?", (photo,)).fetchone()
            if current is None:
                raise ConflictError(f"photo {photo[:12]} is not in the catalogue")
            if action != "unresolved":
                self._check_assignment(conn, action, current[0], individual_id)
                if action == "register":
                    self.add_individual(conn, individual_id, species, "registered", reviewer)
                if embedding is not None:
                    conn.execute(
                        "UPDATE photos SET embedding = COALESCE(embedding, ?) WHERE sha256 = ?",
                        (np.asarray(embedding, np.float32).tobytes(), photo),
                    )
            decision = self.record(conn, photo, action, individual_id, note, reviewer, scores,
                                   from_individual=current[0] or "")  # fmt: skip
            history.rederive(conn, [photo])
            return decision

    def _check_assignment(self, conn, action: str, current: str | None, individual_id: str) -> None:
        if action == "reassign":
            if current is None:
                raise ConflictError("this photo is not assigned to anyone: confirm or register it instead")
            if current == individual_id:
                raise ConflictError(f"this photo is already assigned to {individual_id}")
        elif current is not None:
            raise ConflictError(f"this photo is already assigned to {current}")
        exists = conn.execute("SELECT 1 FROM individuals WHERE id = ?", (individual_id,)).fetchone()
        if action == "register" and exists:
            raise ConflictError(
                f"individual {individual_id} exists already; assign the photo to it (search by id) "
                "or pick another id"
            )
        if action != "register" and not exists:
            raise ConflictError(f"individual {individual_id} is not in the catalogue")
        merged = history.merged_into(conn).get(individual_id)
        if merged is not None:
            raise ConflictError(f"individual {individual_id} was merged into {merged}: assign to {merged}")

    def record(
        self, conn: sqlite3.Connection, photo: str | None, action: str, individual_id: str, note: str,
        reviewer: str, scores: list | None = None, from_individual: str = "", reverts: int | None = None,
        batch: int | None = None,
    ) -> int:  # fmt: skip
        """Append one row to the history (in the caller's transaction); returns its id."""
        cursor = conn.execute(
            "INSERT INTO decisions (photo_sha256, action, individual_id, note, reviewer, decided_at, scores, "
            "from_individual, reverts, batch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (photo, action, individual_id, note, reviewer, now(), json.dumps(scores or []),
             from_individual, reverts, batch),
        )  # fmt: skip
        return int(cursor.lastrowid)
