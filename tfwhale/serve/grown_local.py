"""The fused re-rank over the catalogue's grown photos (serve): the gallery's photos under the
catalogue's current ids, then the photos assigned in the catalogue with their local features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tfwhale.contracts.local_features import NO_FEATURES, LocalFeatures
from tfwhale.query.local import LocalRerankPath


@dataclass(frozen=True)
class GrownLocal:
    """The re-rank searched now (`path`) and what it was made of: `base`, the gallery's photos under the
    catalogue's ids with no grown photos, and the grown photos (hashes, features, ids; row for row, as
    the engine's grown rows). Immutable: the engine swaps in a new one, searches keep theirs."""

    base: LocalRerankPath
    path: LocalRerankPath
    hashes: tuple[str, ...] = ()
    features: tuple[LocalFeatures, ...] = ()
    ids: tuple[str, ...] = ()

    @classmethod
    def of(cls, local: LocalRerankPath) -> GrownLocal:
        return cls(local, local)

    def relabelled(
        self, origin: LocalRerankPath, base_labels: Sequence[str], hashes: Sequence[str],
        features: Sequence[LocalFeatures], ids: Sequence[str],
    ) -> GrownLocal:  # fmt: skip
        """The gallery's photos (of `origin`, the loaded path) under `base_labels`, then the grown photos
        given (these replace the grown before; its indexes are reused where they fit)."""
        base = origin.relabelled(base_labels)
        path = base.with_grown(hashes, features, ids, self.path)
        return GrownLocal(base, path, tuple(hashes), tuple(features), tuple(ids))

    def added(self, photo: str, features: LocalFeatures | None, individual: str) -> GrownLocal:
        """One more grown photo (None: its features are not known; it gets no votes)."""
        hashes = (*self.hashes, photo)
        found = (*self.features, NO_FEATURES if features is None else features)
        ids = (*self.ids, individual)
        return GrownLocal(self.base, self.base.with_grown(hashes, found, ids, self.path), hashes, found, ids)
