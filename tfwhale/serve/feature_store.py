"""The catalogue's local features (serve): each photo's keypoints and descriptors kept with it, so the
fused re-rank searches the catalogue's grown photos as it searches the gallery's own, across restarts."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence

import numpy as np

from tfwhale.contracts.local_features import DESCRIPTOR_DIM, KEYPOINT_FIELDS, NO_FEATURES, LocalFeatures
from tfwhale.serve.store import Store

logger = logging.getLogger(__name__)


def save(conn: sqlite3.Connection, photo: str, made_by: str, features: LocalFeatures) -> None:
    """Keep one photo's features (in the caller's transaction), replacing any made before."""
    conn.execute(
        "INSERT OR REPLACE INTO local_features (photo_sha256, made_by, keypoints, descriptors, width, "
        "height) VALUES (?, ?, ?, ?, ?, ?)",
        (photo, made_by, np.ascontiguousarray(features.keypoints, np.float16).tobytes(),
         np.ascontiguousarray(features.descriptors, np.uint8).tobytes(), *features.image_size),
    )  # fmt: skip


def load(conn: sqlite3.Connection, photos: Sequence[str], made_by: str) -> dict[str, LocalFeatures]:
    """The stored features of those of `photos` that have some made under `made_by`."""
    found, wanted = {}, list(photos)
    for start in range(0, len(wanted), 500):  # SQLite caps the number of bound parameters
        chunk = wanted[start : start + 500]
        rows = conn.execute(
            f"SELECT photo_sha256, keypoints, descriptors, width, height FROM local_features "
            f"WHERE made_by = ? AND photo_sha256 IN ({','.join('?' * len(chunk))})",
            (made_by, *chunk),
        )
        for photo, keypoints, descriptors, width, height in rows:
            found[photo] = LocalFeatures(
                np.frombuffer(keypoints, np.float16).reshape(-1, len(KEYPOINT_FIELDS)),
                np.frombuffer(descriptors, np.uint8).reshape(-1, DESCRIPTOR_DIM),
                (int(width), int(height)),
            )
    return found


def features_of(
    store: Store, photos: Sequence[str], made_by: str,
    make: Callable[[str], LocalFeatures | None],
) -> list[LocalFeatures]:  # fmt: skip
    """Every photo's features, in order: stored ones, else made by `make(photo)` (from its original) and
    stored; a photo that cannot give any (None: no original, unreadable) gets none (zero keypoints: no
    inliers, no votes), and is tried again next time."""
    found = load(store.conn, photos, made_by)
    missing = [photo for photo in photos if photo not in found]
    if missing:
        logger.info("catalogue: making the local features of %d photos assigned before they were kept",
                    len(missing))  # fmt: skip
    for done, photo in enumerate(missing, 1):
        made = make(photo)
        if made is not None:
            with store.transaction() as conn:
                save(conn, photo, made_by, made)
            found[photo] = made
        if done % 50 == 0 or done == len(missing):
            logger.info("catalogue: local features made for %d of %d photos", done, len(missing))
    return [found.get(photo, NO_FEATURES) for photo in photos]
