"""The LNBNN index over photos added to a gallery one at a time (the catalogue app's grown photos).

Building a FLANN index costs ~4 us a descriptor (~4 ms a real photo), so one index over every grown photo
rebuilt at each addition would cost seconds a photo once there are a thousand. Instead: a sealed index
over the first photos, kept, and a recent one over the rest, rebuilt when a photo is added; when the recent
photos reach RECENT_PHOTOS, one index over all of them is sealed again. Searches merge the indexes'
neighbour lists by distance, so the votes are as if one index held every photo.
"""

from __future__ import annotations

import numpy as np

from tfwhale.contracts.local_features import FeatureSet, LocalFeatures
from tfwhale.matching.lnbnn import LnbnnIndex, Neighbours

RECENT_PHOTOS = 32  # photos in the recent index before all are sealed into one (a rebuild of <~130 ms)


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


class GrownIndex:
    """Grown photos' features (rows 0..n) and the indexes over them: (first row, index) each."""

    def __init__(self, features: FeatureSet, previous: GrownIndex | None = None) -> None:
        """Reuses `previous`'s sealed index when `features` starts with the photos it covers."""
        self.features = features
        n = len(features)
        sealed = previous.parts[0] if previous is not None and previous.parts else None
        reusable = sealed is not None and sealed[2] <= n
        reusable = reusable and tuple(features.names[: sealed[2]]) == previous.features.names[: sealed[2]]
        if reusable and n - sealed[2] < RECENT_PHOTOS:
            recent = photo_range(features, sealed[2], n)
            self.parts = [sealed, (sealed[2], _index(recent), n)] if n > sealed[2] else [sealed]
        else:
            self.parts = [(0, _index(features), n)]  # (first row, index or None, row after the last)

    def __len__(self) -> int:
        return len(self.features)

    def neighbours(self, query: LocalFeatures, k: int, offset: int) -> list[Neighbours]:
        """Each index's k nearest descriptors, their photos numbered from `offset` (the grown rows' first)."""
        found = []
        for first, index, _ in self.parts:
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
