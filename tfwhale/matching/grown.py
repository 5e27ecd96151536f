"""The LNBNN index over photos added to a gallery one at a time (the catalogue app's grown photos).

Building a FLANN index costs ~4 us a descriptor (~4 ms a real photo), so one index over every grown photo
rebuilt at each addition would cost seconds a photo once there are a thousand. Instead: a sealed index
over the first photos, kept, and a recent one over the rest, rebuilt when a photo is added; when the recent
photos reach RECENT_PHOTOS, one index over all of them is sealed again in a background thread, so that
the addition that asks for it does not wait (seconds at a thousand photos): until the new sealed index is
swapped in, searches use the old one and a recent one over every photo after it, so no photo is missed.
Searches merge the indexes' neighbour lists by distance, so the votes are as if one index held every photo.
"""

from __future__ import annotations

import logging
import threading
import weakref

import numpy as np

from tfwhale.contracts.local_features import FeatureSet, LocalFeatures
from tfwhale.matching.lnbnn import LnbnnIndex, Neighbours

logger = logging.getLogger(__name__)

RECENT_PHOTOS = 32  # photos in the recent index before all are sealed into one (a rebuild of <~130 ms)

Part = tuple[int, LnbnnIndex | None, int]  # (first row, index or None: no descriptors, row after the last)


def photo_range(features: FeatureSet, start: int, stop: int) -> FeatureSet:
    """Photos start..stop of a set (their arrays are views, not copies)."""
    first, last = int(features.offsets[start]), int(features.offsets[stop])
    return FeatureSet(
        features.names[start:stop],
        features.offsets[start : stop + 1] - first,
        features.keypoints[first:last],
        features.descriptors[first:last],
        features.image_sizes[start:stop],
    )


def _index(features: FeatureSet) -> LnbnnIndex | None:
    return LnbnnIndex(features) if len(features.descriptors) else None  # photos without features: none


def _sealed(features: FeatureSet) -> Part:
    """One index over every photo of the set (what a seal builds)."""
    return (0, _index(features), len(features))


class _Sealing:
    """The background seal of one chain of grown indexes (each made from the one before): one seal at a
    time; the newest finished sealed index, for the next index of the chain to reuse; and the chain's
    newest index, which gets it swapped in."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.sealed: tuple[tuple[str, ...], Part] | None = None  # (its photos' names, its part)
        self.newest: weakref.ref[GrownIndex] | None = None

    def start(self, index: GrownIndex) -> None:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                return  # the seal under way covers most of these photos; the next addition asks again
            self.thread = threading.Thread(target=self._seal, args=(index.features,), daemon=True)
            self.thread.start()

    def _seal(self, features: FeatureSet) -> None:
        try:
            part = _sealed(features)
        except Exception:  # the old sealed index and the recent one still cover every photo
            logger.exception("sealing the index of %d grown photos failed", len(features))
            return
        with self.lock:
            self.sealed = (tuple(features.names), part)
            newest = self.newest() if self.newest is not None else None
        if newest is not None:
            newest.take(features.names, part)


def _covers(features: FeatureSet, names: tuple[str, ...], part: Part) -> bool:
    """Whether a sealed part over photos `names` covers the first photos of `features`."""
    return part[2] <= len(features) and tuple(features.names[: part[2]]) == tuple(names[: part[2]])


class GrownIndex:
    """Grown photos' features (rows 0..n) and the indexes over them: (first row, index, row after) each."""

    def __init__(self, features: FeatureSet, previous: GrownIndex | None = None) -> None:
        """Reuses the newest sealed index of `previous`'s chain when `features` starts with its photos
        (else seals every photo here: the first index, or one whose first photos changed)."""
        self.features = features
        self._sealing = previous._sealing if previous is not None else _Sealing()
        candidates = []
        if previous is not None and previous.parts:
            candidates.append((previous.features.names, previous.parts[0]))
        if self._sealing.sealed is not None:
            candidates.append(self._sealing.sealed)
        usable = [part for names, part in candidates if _covers(features, names, part)]
        if usable:
            sealed = max(usable, key=lambda part: part[2])
            self.parts = self._with_recent(sealed)
            if len(features) - sealed[2] >= RECENT_PHOTOS:
                self._sealing.start(self)
        else:
            self.parts = [_sealed(features)]
        with self._sealing.lock:
            self._sealing.newest = weakref.ref(self)
            finished = self._sealing.sealed
        if finished is not None:  # a seal that ended while this was built handed its index to the one before
            self.take(*finished)

    def __len__(self) -> int:
        return len(self.features)

    def _with_recent(self, sealed: Part) -> list[Part]:
        """`sealed` and a recent index over the photos after it."""
        n = len(self.features)
        if n == sealed[2]:
            return [sealed]
        return [sealed, (sealed[2], _index(photo_range(self.features, sealed[2], n)), n)]

    def take(self, names: tuple[str, ...], sealed: Part) -> None:
        """Swap in a sealed index made meanwhile (over photos `names`), if it covers more of these photos
        than the one searched now, with a recent index over the rest: one assignment, so that a search
        reads the old parts or the new, each covering every photo."""
        if sealed[2] > self.parts[0][2] and _covers(self.features, names, sealed):
            self.parts = self._with_recent(sealed)

    def settle(self) -> None:
        """Wait for a seal under way (tests and benchmarks: the answers are the same either way)."""
        thread = self._sealing.thread
        if thread is not None:
            thread.join()

    def neighbours(self, query: LocalFeatures, k: int, offset: int) -> list[Neighbours]:
        """Each index's k nearest descriptors, their photos numbered from `offset` (the grown rows' first)."""
        found = []
        for first, index, _ in self.parts:  # read once: a seal swapped in meanwhile is for the next search
            if index is not None:
                near = index.neighbours(query, k)
                found.append(Neighbours(near.photo + offset + first, near.distance))
        return found


def merge_neighbours(lists: list[Neighbours], k: int) -> Neighbours:
    """The k nearest of several indexes' neighbour lists (same query descriptors), by distance."""
    if len(lists) == 1:
        return lists[0]
    photo = np.concatenate([found.photo for found in lists], axis=1)
    distance = np.concatenate([found.distance for found in lists], axis=1)
    nearest = np.argsort(distance, axis=1, kind="stable")[:, :k]
    return Neighbours(np.take_along_axis(photo, nearest, 1), np.take_along_axis(distance, nearest, 1))
