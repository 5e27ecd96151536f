"""build-tfrecords local features: one .npz per shard beside it (contracts.local_features), its manifest
entry, and the manifest's "local_features" section.

One file per shard, not per split or fold: a shard's records and its features are made by the same pass
over its photos, so the build resumes, verifies and adds features shard by shard (a file's rows are the
shard's records in order), and predict reads a fold's features as it reads its records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from tfwhale.contracts import records
from tfwhale.contracts.local_features import FeatureSet, LocalFeatures, save_feature_set
from tfwhale.core import files
from tfwhale.matching.features import SiftSettings


def sift_settings(match_size: int | None) -> SiftSettings:
    """The settings features are taken with: the matching library's defaults, the match size given."""
    return SiftSettings() if match_size is None else SiftSettings(match_size=match_size)


def settings_entry(sift: SiftSettings) -> dict[str, Any]:
    """What build settings and the manifest record of how features were taken."""
    return asdict(sift)


def write_features(out: str, shard_name: str, names: Sequence[str], found: Sequence[LocalFeatures]) -> dict:
    """Write a shard's feature file atomically (temp name, then rename); its manifest entry."""
    name = records.features_name(shard_name)
    path = files.join(out, name)
    sha256 = save_feature_set(path, FeatureSet.from_photos(list(names), list(found)))
    keypoints = sum(len(f) for f in found)
    return {"name": name, "sha256": sha256, "bytes": files.size(path), "photos": len(names),
            "keypoints": keypoints, "no_keypoints": sum(len(f) == 0 for f in found)}  # fmt: skip


def intact(out: str, entry: Mapping[str, Any]) -> bool:
    """A feature file is whole when its size and sha256 are those recorded when it was written."""
    path = files.join(out, entry["name"])
    return (
        files.exists(path)
        and files.size(path) == int(entry["bytes"])
        and files.sha256(path) == entry["sha256"]
    )


def manifest_section(entries: Sequence[Mapping[str, Any]], sift: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's "local_features": settings and totals (each shard entry lists its own file)."""
    photos = sum(int(e["photos"]) for e in entries)
    n_bytes = sum(int(e["bytes"]) for e in entries)
    # A shard kept from a run before photos without keypoints were counted leaves the total unknown.
    counted = all("no_keypoints" in e for e in entries)
    return {
        "sift": dict(sift),
        "photos": photos,
        "keypoints": sum(int(e["keypoints"]) for e in entries),
        **({"no_keypoints": sum(int(e["no_keypoints"]) for e in entries)} if counted else {}),
        "bytes": n_bytes,
        "bytes_per_photo": round(n_bytes / photos) if photos else 0,
        "files": len(entries),
    }


def no_keypoints_note(count: int | None) -> str:
    """What a person reads about the photos that gave no keypoints (count None: not recorded)."""
    if count is None:
        return "photos without keypoints: not counted (a build from before they were)"
    if count == 0:
        return "every photo gave keypoints"
    photos = "1 photo" if count == 1 else f"{count} photos"
    return (
        f"{photos} gave no keypoints: {'it is' if count == 1 else 'they are'} matched by the embedding alone"
    )
