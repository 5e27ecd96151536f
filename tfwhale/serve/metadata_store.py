"""The catalogue's photo metadata records (serve): read, save with history (who, when, how), filter.

Its own tables (their own schema migration), keyed by the photo's hash: each save replaces the current
record and appends the whole new record to photo_metadata_history, so every version stays readable.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from tfwhale.serve.metadata import SIDES, MetaError, PhotoMeta, parse_date
from tfwhale.serve.store import ConflictError, Store, now

_FIELDS = ("date", "latitude", "longitude", "place", "side", "photographer", "notes")
_SELECT = f"SELECT photo_sha256, {', '.join(_FIELDS)} FROM photo_metadata"


def metadata(store: Store, photo: str) -> PhotoMeta:
    """The photo's metadata; an empty record when none was ever saved."""
    row = store.conn.execute(f"{_SELECT} WHERE photo_sha256 = ?", (photo,)).fetchone()
    return PhotoMeta(*row[1:]) if row else PhotoMeta()


def all_metadata(store: Store) -> dict[str, PhotoMeta]:
    """Photo hash -> metadata of every photo that has a record."""
    return {row[0]: PhotoMeta(*row[1:]) for row in store.conn.execute(_SELECT)}


def known_sides(store: Store) -> dict[str, str]:
    """Photo hash -> side, for the photos whose side is known (not 'unknown')."""
    rows = store.conn.execute("SELECT photo_sha256, side FROM photo_metadata WHERE side != 'unknown'")
    return {sha: side for sha, side in rows}


def save(conn: sqlite3.Connection, photo: str, meta: PhotoMeta, how: str, by: str) -> None:
    """Replace the photo's record and append it to the history, inside the caller's transaction."""
    stamp = now()
    values = [getattr(meta, name) for name in _FIELDS]
    conn.execute(
        f"INSERT OR REPLACE INTO photo_metadata (photo_sha256, {', '.join(_FIELDS)}, updated_at, updated_by) "
        f"VALUES (?, {', '.join('?' for _ in _FIELDS)}, ?, ?)",
        (photo, *values, stamp, by),
    )
    conn.execute(
        "INSERT INTO photo_metadata_history (photo_sha256, fields, how, changed_by, changed_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (photo, json.dumps(asdict(meta), sort_keys=True), how, by, stamp),
    )


def set_metadata(store: Store, photo: str, meta: PhotoMeta, how: str, by: str) -> None:
    """Save in one transaction; ConflictError when the photo is not in the catalogue."""
    with store.transaction() as conn:
        if conn.execute("SELECT 1 FROM photos WHERE sha256 = ?", (photo,)).fetchone() is None:
            raise ConflictError(f"photo {photo[:12]} is not in the catalogue")
        if metadata_in(conn, photo) != meta:  # an unchanged save adds no version
            save(conn, photo, meta, how, by)


def metadata_in(conn: sqlite3.Connection, photo: str) -> PhotoMeta:
    row = conn.execute(f"{_SELECT} WHERE photo_sha256 = ?", (photo,)).fetchone()
    return PhotoMeta(*row[1:]) if row else PhotoMeta()


def history(store: Store, photo: str) -> list[dict]:
    """Every saved version of the photo's metadata, oldest first: {fields, how, changed_by, changed_at}."""
    rows = store.conn.execute(
        "SELECT fields, how, changed_by, changed_at FROM photo_metadata_history WHERE photo_sha256 = ? "
        "ORDER BY id",
        (photo,),
    ).fetchall()
    return [{"fields": json.loads(r[0]), "how": r[1], "changed_by": r[2], "changed_at": r[3]} for r in rows]


@dataclass(frozen=True)
class MetaFilter:
    """What the review queue, the individuals list and the inbox can be narrowed to ('' = any)."""

    side: str = ""
    date_from: str = ""  # inclusive, 'YYYY-MM-DD'
    date_to: str = ""  # inclusive: the whole day
    place: str = ""  # text the place contains (case-insensitive)
    photographer: str = ""  # text the photographer contains

    @classmethod
    def from_query(
        cls, side: str = "", date_from: str = "", date_to: str = "", place: str = "", photographer: str = ""
    ) -> MetaFilter:
        """From a page's query parameters; MetaError naming the parameter when one is unusable."""
        side = side.strip().lower()
        if side and side not in SIDES:
            raise MetaError(f"side: {side[:40]!r} is not one of {', '.join(SIDES)}")
        dates = []
        for name, text in (("from", date_from), ("to", date_to)):
            try:
                dates.append(parse_date(text.strip())[:10])
            except MetaError:
                raise MetaError(f"{name}: {text[:40]!r} is not a date (YYYY-MM-DD)") from None
        return cls(side, dates[0], dates[1], place.strip()[:200], photographer.strip()[:100])

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> MetaFilter:
        """From a request's query parameters (the filter bar's names); the others are left to the page."""
        names = ("side", "date_from", "date_to", "place", "photographer")
        return cls.from_query(**{name: params.get(name, "") for name in names})

    def is_empty(self) -> bool:
        return self == MetaFilter()

    def query(self) -> str:
        """The filter as a URL query string (the pages' links keep it)."""
        from urllib.parse import urlencode

        return urlencode({key: value for key, value in asdict(self).items() if value})

    def where(self) -> tuple[str, list[str]]:
        """SQL conditions on photo_metadata m, and their arguments."""
        conditions, args = [], []
        if self.side:
            conditions.append("m.side = ?")
            args.append(self.side)
        if self.date_from:
            conditions.append("m.date != '' AND substr(m.date, 1, 10) >= ?")
            args.append(self.date_from)
        if self.date_to:
            conditions.append("m.date != '' AND substr(m.date, 1, 10) <= ?")
            args.append(self.date_to)
        for column, text in (("place", self.place), ("photographer", self.photographer)):
            if text:
                conditions.append(f"m.{column} LIKE ? ESCAPE '\\'")
                args.append("%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        return " AND ".join(conditions) or "1", args


def matching_photos(store: Store, wanted: MetaFilter) -> set[str]:
    """Hashes of the photos whose metadata passes the filter."""
    where, args = wanted.where()
    rows = store.conn.execute(f"SELECT m.photo_sha256 FROM photo_metadata m WHERE {where}", args)
    return {row[0] for row in rows}


def matching_individuals(store: Store, wanted: MetaFilter) -> set[str]:
    """Ids of the individuals with at least one photo whose metadata passes the filter."""
    where, args = wanted.where()
    rows = store.conn.execute(
        "SELECT DISTINCT p.individual_id FROM photos p JOIN photo_metadata m ON m.photo_sha256 = p.sha256 "
        f"WHERE p.individual_id IS NOT NULL AND {where}",
        args,
    )
    return {row[0] for row in rows}
