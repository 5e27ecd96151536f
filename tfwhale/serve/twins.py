"""The same photo twice (serve): a perceptual hash of the decoded crop, and the catalogue's index of them.

The file bytes of one photo differ between an upload and the records' re-encoded crop, so the catalogue
compares what the models saw: the crop, decoded, greyscale, 32x32, its 2-D DCT's lowest 8x8 frequencies
against their median (pHash). Re-encoding and resizing move few of its 64 bits; another photo moves
about half of them.
"""

from __future__ import annotations

import io
import logging
import threading

import numpy as np
from PIL import Image
from tqdm import tqdm

logger = logging.getLogger(__name__)

SIDE = 32
LOW = 8
# bits. Measured on the lion (740) and nyala (330) photos: a copy re-encoded at quality 75-90 or resized
# x0.5/x2 moves 0-2 bits; two different photos of one set differ by 6 bits or more (5th percentile 24).
MAX_DISTANCE = 4


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


_DCT = _dct_matrix(SIDE)


def phash(data: bytes) -> int:
    """The 64-bit perceptual hash of an image file's decoded pixels; ValueError if it is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            grey = image.convert("L").resize((SIDE, SIDE), Image.LANCZOS)
    except Exception as err:
        raise ValueError(f"cannot decode the image for its perceptual hash: {err}") from None
    pixels = np.asarray(grey, np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:LOW, :LOW].ravel()
    bits = low > np.median(low[1:])  # the DC term (mean brightness) would skew the median
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def to_text(value: int) -> str:
    return f"{value:016x}"


class TwinIndex:
    """Photo hash -> pHash of every photo in the catalogue; finds the photos whose pHash is within
    MAX_DISTANCE bits of a given one (a linear scan: 100,000 photos take a few milliseconds)."""

    def __init__(self, items: dict[str, str]) -> None:
        self._lock = threading.Lock()
        self._photos = list(items)
        self._hashes = np.array([int(text, 16) for text in items.values()], np.uint64)

    def add(self, photo: str, value: int) -> None:
        with self._lock:
            self._photos.append(photo)
            self._hashes = np.append(self._hashes, np.uint64(value))

    def find(self, value: int, max_distance: int = MAX_DISTANCE) -> list[str]:
        with self._lock:
            photos, hashes = self._photos, self._hashes
        distance = np.bitwise_count(np.bitwise_xor(hashes, np.uint64(value)))
        return [photos[i] for i in np.flatnonzero(distance <= max_distance)]

    def of(self, photo: str, value: int | None) -> set[str]:
        """The twins of a photo in the catalogue (not the photo itself)."""
        return set() if value is None else set(self.find(value)) - {photo}


class Twins:
    """The catalogue's pairs of photos that are one photo. Only the photos the app added (uploads) can
    duplicate another, so the pairs are found for them, once each, and kept both ways."""

    def __init__(self, hashes: dict[str, str], added: list[str]) -> None:
        self.index = TwinIndex(hashes)
        self._pairs: dict[str, set[str]] = {}
        for photo in added:
            if photo in hashes:
                self._link(photo, int(hashes[photo], 16))

    def of(self, photo: str) -> set[str]:
        return self._pairs.get(photo, set())

    def record(self, photo: str, value: int) -> None:
        """A new photo of the catalogue and its pHash."""
        if photo not in self._pairs:
            self._link(photo, value)
            self.index.add(photo, value)

    def _link(self, photo: str, value: int) -> None:
        self._pairs[photo] = self.index.of(photo, value)
        for twin in self._pairs[photo]:
            self._pairs.setdefault(twin, set()).add(photo)


def hash_missing(store, blobs) -> dict[str, str]:
    """Photo hash -> pHash text of every photo, computing (once, kept in the database) those missing:
    the records' photos on a catalogue's first start, photos from before the hashes were kept."""
    conn = store.conn
    missing = conn.execute(
        "SELECT sha256, crop_sha256 FROM photos WHERE sha256 NOT IN (SELECT photo_sha256 FROM phashes)"
    ).fetchall()
    bar = tqdm(total=len(missing), desc="perceptual hashes (once)", unit="photo", disable=len(missing) < 1000)
    for start in range(0, len(missing), 500):  # a batch per transaction: an interrupted start resumes
        found = []
        for sha, crop in missing[start : start + 500]:
            try:
                found.append((sha, to_text(phash(blobs.get(crop)))))
            except (OSError, ValueError) as err:  # no picture: such a photo cannot be uploaded twice
                logger.debug("%s: no perceptual hash (%s)", sha[:12], err)
        with store.transaction() as writing:
            writing.executemany("INSERT OR REPLACE INTO phashes VALUES (?, ?)", found)
        bar.update(len(missing[start : start + 500]))
    bar.close()
    return dict(conn.execute("SELECT photo_sha256, phash FROM phashes").fetchall())
