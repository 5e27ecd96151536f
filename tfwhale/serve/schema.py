"""The catalogue database's schema (serve): tables, and the migrations that lead to the current version."""

from __future__ import annotations

import sqlite3

# Migration n takes a database from version n to n + 1; append, never edit an applied one.
# Statements are split on ';': keep semicolons out of the comments.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE individuals (
        id TEXT PRIMARY KEY,
        species TEXT NOT NULL DEFAULT '',
        origin TEXT NOT NULL,             -- 'gallery' (from predict's gallery) or 'registered'
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE photos (
        sha256 TEXT PRIMARY KEY,          -- of the bytes as received: the same photo twice is one row
        source TEXT NOT NULL,             -- 'gallery', 'test' (predict's test photos) or 'upload'
        name TEXT NOT NULL,               -- image name in the records, or the upload's file name (shown only)
        crop_sha256 TEXT NOT NULL,        -- the crop the models saw, as the records hold it
        box TEXT NOT NULL DEFAULT '',
        individual_id TEXT REFERENCES individuals(id),
        embedding BLOB,                   -- float32 in the gallery space, for photos the app embedded
        added_at TEXT NOT NULL,
        added_by TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX photos_individual ON photos(individual_id);
    CREATE INDEX photos_source ON photos(source);
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        photo_sha256 TEXT NOT NULL REFERENCES photos(sha256),
        action TEXT NOT NULL CHECK (action IN ('confirm', 'register', 'unresolved')),
        individual_id TEXT NOT NULL DEFAULT '',
        note TEXT NOT NULL DEFAULT '',
        reviewer TEXT NOT NULL DEFAULT '',
        decided_at TEXT NOT NULL,
        scores TEXT NOT NULL DEFAULT '[]' -- the candidates and similarities the reviewer saw (JSON)
    );
    CREATE INDEX decisions_photo ON decisions(photo_sha256);
    CREATE INDEX decisions_individual ON decisions(individual_id);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # photo metadata (when, where, which side, by whom): its own tables, keyed by the photo's hash
    """
    CREATE TABLE photo_metadata (
        photo_sha256 TEXT PRIMARY KEY REFERENCES photos(sha256),
        date TEXT NOT NULL DEFAULT '',    -- 'YYYY-MM-DDTHH:MM:SS' or 'YYYY-MM-DD', the camera's local time
        latitude REAL,
        longitude REAL,
        place TEXT NOT NULL DEFAULT '',
        side TEXT NOT NULL DEFAULT 'unknown'
            CHECK (side IN ('unknown', 'left', 'right', 'front', 'back')),
        photographer TEXT NOT NULL DEFAULT '',
        notes TEXT NOT NULL DEFAULT '',
        updated_at TEXT NOT NULL,
        updated_by TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX photo_metadata_side ON photo_metadata(side);
    CREATE INDEX photo_metadata_date ON photo_metadata(date);
    CREATE TABLE photo_metadata_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        photo_sha256 TEXT NOT NULL REFERENCES photos(sha256),
        fields TEXT NOT NULL,             -- the whole record after the change (JSON): nothing is overwritten
        how TEXT NOT NULL,                -- 'upload' (EXIF and the form), 'edit', 'import' or 'records'
        changed_by TEXT NOT NULL DEFAULT '',
        changed_at TEXT NOT NULL
    );
    CREATE INDEX photo_metadata_history_photo ON photo_metadata_history(photo_sha256);
    """,
    # corrections (reassign, undo, merge, split), the inbox's stored answers, perceptual hashes.
    # SQLite cannot change a CHECK constraint: the decisions table is rebuilt with its rows kept.
    """
    CREATE TABLE decisions_v2 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        photo_sha256 TEXT REFERENCES photos(sha256), -- NULL for a merge (it is about individuals)
        action TEXT NOT NULL CHECK (action IN
            ('confirm', 'register', 'unresolved', 'reassign', 'undo', 'merge', 'split')),
        individual_id TEXT NOT NULL DEFAULT '',      -- the id the photo goes to (merge: the one kept)
        note TEXT NOT NULL DEFAULT '',
        reviewer TEXT NOT NULL DEFAULT '',
        decided_at TEXT NOT NULL,
        scores TEXT NOT NULL DEFAULT '[]',
        from_individual TEXT NOT NULL DEFAULT '',    -- the id it leaves (merge: the id merged away)
        reverts INTEGER,                             -- undo: the decision it takes back
        batch INTEGER                                -- the first decision of a split or of its undo
    );
    INSERT INTO decisions_v2 (id, photo_sha256, action, individual_id, note, reviewer, decided_at, scores)
        SELECT id, photo_sha256, action, individual_id, note, reviewer, decided_at, scores FROM decisions;
    DROP TABLE decisions;
    ALTER TABLE decisions_v2 RENAME TO decisions;
    CREATE INDEX decisions_photo ON decisions(photo_sha256);
    CREATE INDEX decisions_individual ON decisions(individual_id);
    CREATE INDEX decisions_reverts ON decisions(reverts);
    ALTER TABLE photos ADD COLUMN record_individual TEXT;  -- the records' id of a gallery photo
    UPDATE photos SET record_individual = individual_id WHERE source = 'gallery';
    CREATE TABLE answers (
        photo_sha256 TEXT PRIMARY KEY REFERENCES photos(sha256),
        gallery TEXT NOT NULL,            -- embeddings_sha256 of the gallery that answered
        answer TEXT NOT NULL,             -- threshold and candidates with their photos (JSON)
        answered_at TEXT NOT NULL
    );
    CREATE TABLE phashes (
        photo_sha256 TEXT PRIMARY KEY REFERENCES photos(sha256),
        phash TEXT NOT NULL               -- 64-bit DCT hash of the decoded crop, 16 hex digits
    );
    CREATE INDEX phashes_hash ON phashes(phash)
    """,
    # local features of the catalogue's photos, so the fused re-rank searches its grown photos too
    """
    CREATE TABLE local_features (
        photo_sha256 TEXT PRIMARY KEY REFERENCES photos(sha256),
        made_by TEXT NOT NULL,            -- the crop and SIFT settings' key: another key makes them again
        keypoints BLOB NOT NULL,          -- float16 (n, 4): x, y, size, angle
        descriptors BLOB NOT NULL,        -- uint8 (n, 128)
        width INTEGER NOT NULL,           -- the matching image's size, whose frame the keypoints are in
        height INTEGER NOT NULL
    )
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(RuntimeError):
    """A catalogue database this version of tfwhale cannot use."""


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the database to SCHEMA_VERSION, each migration in one transaction; returns the version.

    `conn` is in autocommit mode (isolation_level=None): transactions are spelled out."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    version = row[0] if row else 0
    if version > SCHEMA_VERSION:
        raise SchemaError(f"{path}: schema version {version} is newer than this tfwhale's {SCHEMA_VERSION}")
    for number in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")  # one transaction: a migration applies whole or not at all
        try:
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number + 1,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return SCHEMA_VERSION
