"""The fused re-rank over the catalogue's grown photos (serve): the gallery's photos under the
catalogue's current ids, then the photos assigned in the catalogue with their local features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tfwhale.contracts.local_features import NO_FEATURES, LocalFeatures
from tfwhale.query.local import LocalRerankPath


@dataclass(frozen=True)
class GrownLocal:
    """The re-rank searched now (`path`: the gallery's photos under the catalogue's ids, then the grown
    ones) and its grown photos (hashes, features, ids; row for row, as the engine's grown rows).
    Immutable: the engine swaps in a new one, searches keep theirs."""

    path: LocalRerankPath
    hashes: tuple[str, ...] = ()
    features: tuple[LocalFeatures, ...] = ()
    ids: tuple[str, ...] = ()

    def relabelled(
        self, origin: LocalRerankPath, base_labels: Sequence[str], hashes: Sequence[str],
        features: Sequence[LocalFeatures], ids: Sequence[str],
    ) -> GrownLocal:  # fmt: skip
        """The gallery's photos (of `origin`, the loaded path) under `base_labels`, then the grown photos
        given (these replace the grown before; its indexes are reused where they fit)."""
        path = origin.relabelled(base_labels, hashes, features, ids, self.path)
        return GrownLocal(path, tuple(hashes), tuple(features), tuple(ids))

    def added(self, photo: str, features: LocalFeatures | None, individual: str) -> GrownLocal:
        """One more grown photo (None: its features are not known; it gets no votes)."""
        hashes = (*self.hashes, photo)
        found = (*self.features, NO_FEATURES if features is None else features)
        ids = (*self.ids, individual)
        return GrownLocal(self.path.with_grown(hashes, found, ids, self.path), hashes, found, ids)
