"""build-tfrecords last step: rejects.csv and manifest.json, the file that says a build is finished."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import tfwhale
from tfrecords_builder import local_features
from tfrecords_builder.errors import REJECT_COLUMNS, Reject
from tfrecords_builder.resume import ShardRecord
from tfwhale.contracts import records
from tfwhale.core import files
from tfwhale.core.csv_text import csv_text
from tfwhale.imaging.photo_crop import ImageSettings

_CATEGORY_END = re.compile(r"[:(]")


def reason_category(reason: str) -> str:
    """A reject reason without its details (file paths after ':', row numbers), for counting by kind."""
    head = _CATEGORY_END.split(reason, maxsplit=1)[0].strip()
    return re.sub(r"\d+", "N", head)


def count_by_reason(rejects: Sequence[Reject]) -> dict[str, int]:
    counts = Counter(reason_category(reject.reason) for reject in rejects)
    return dict(counts.most_common())


def write_rejects(out: str, rejects: Sequence[Reject]) -> str:
    """rejects.csv (REJECT_COLUMNS) ordered by CSV row; written even when empty (a header only)."""
    ordered = sorted(rejects, key=lambda r: (r.row is None, r.row or 0, r.image))
    rows = [(r.image, "" if r.row is None else r.row, r.field, r.reason) for r in ordered]
    path = files.join(out, records.REJECTS_NAME)
    files.write_text(path, csv_text([REJECT_COLUMNS, *rows]))  # names and reasons quote the user's text
    return path


def _fold_counts(shards: Sequence[ShardRecord], n_folds: int) -> dict[str, int]:
    counts = {str(fold): 0 for fold in range(n_folds)}
    for shard in shards:
        if shard.split == "train":
            counts[str(shard.fold)] += shard.count
    return counts


def _fallbacks(shards: Sequence[ShardRecord]) -> dict[str, int]:
    total: Counter = Counter()
    for shard in shards:
        total.update(shard.fallbacks)
    return dict(total.most_common())


def manifest_data(
    shards: Sequence[ShardRecord],
    settings: Mapping[str, Any],
    image: ImageSettings,
    individuals: Sequence[str],
    species: Sequence[str],
    photo_counts: Mapping[str, int],
    rejects: Sequence[Reject],
    sources: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything records.Manifest reads, plus how the build was made and what it left out."""
    n_folds = int(settings["n_folds"])
    return {
        "schema_version": records.SCHEMA_VERSION,
        "image_size": int(settings["image_size"]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tfwhale_version": tfwhale.__version__,
        "crop": {
            **image.manifest_fields(),
            **{key: settings[key] for key in ("box_source", "min_conf", "imaging_version")},
        },
        "folds": {"n_folds": n_folds, "seed": int(settings["seed"]), "counts": _fold_counts(shards, n_folds)},
        "labels": {
            "individuals": list(individuals),
            "species": list(species),
            # Every individual has an entry: one whose photos were all rejected counts 0.
            "photo_counts": {name: int(photo_counts.get(name, 0)) for name in individuals},
        },
        "train_count": sum(shard.count for shard in shards if shard.split == "train"),
        "test_count": sum(shard.count for shard in shards if shard.split == "test"),
        "shards": [shard.manifest_entry() for shard in shards],
        "rejects": {
            "count": len(rejects),
            "by_reason": count_by_reason(rejects),
            "file": records.REJECTS_NAME,
        },
        "box_fallbacks": _fallbacks(shards),
        "no_box": sum(shard.no_box for shard in shards),
        "sources": dict(sources),
        "build": {"settings": dict(settings)},
        **_features_section(shards, settings),
    }


def _features_section(shards: Sequence[ShardRecord], settings: Mapping[str, Any]) -> dict[str, Any]:
    """{"local_features": ...} for a build that took them (each shard's entry lists its file), else {}."""
    if not settings.get("local_features"):
        return {}
    entries = [shard.features for shard in shards]
    if any(entry is None for entry in entries):
        missing = [shard.name for shard in shards if shard.features is None]
        raise ValueError(f"shards without their local-feature file: {missing[:3]}")
    return {"local_features": local_features.manifest_section(entries, settings["local_features"])}


def write_manifest(out: str, data: Mapping[str, Any]) -> str:
    """Atomic, and the last file a build writes: its presence means every listed shard is complete."""
    path = files.join(out, records.MANIFEST_NAME)
    files.write_json(path, data)
    return path


def summary(data: Mapping[str, Any], n_reused: int, manifest_path: str) -> str:
    """The table a person reads at the end of a build: images per split and fold, rejects, fallbacks."""
    crop, shards, rejected = data["crop"], data["shards"], data["rejects"]
    lines = [
        f"\nbuilt {files.dirname(manifest_path)}  ({data['image_size']} px, {crop['resize_mode']}, "
        f"boxes: {crop['box_source']})",
        f"  {'split':<6}{'fold':>5}{'images':>9}{'shards':>8}",
    ]
    for fold, count in data["folds"]["counts"].items():
        n_shards = sum(1 for s in shards if s["split"] == "train" and s["fold"] == int(fold))
        lines.append(f"  {'train':<6}{fold:>5}{count:>9}{n_shards:>8}")
    if n_test := sum(1 for s in shards if s["split"] == "test"):
        lines.append(f"  {'test':<6}{'-':>5}{data['test_count']:>9}{n_test:>8}")
    see = f" (see {records.REJECTS_NAME})" if rejected["count"] else ""
    lines.append(f"  rejected: {rejected['count']} image(s){see}")
    lines += [f"    {count:>6}  {reason}" for reason, count in rejected["by_reason"].items()]
    fallbacks = ", ".join(f"{reason}: {n}" for reason, n in data["box_fallbacks"].items()) or "none"
    lines.append(f"  box fallbacks (whole image used): {fallbacks}; images without a box: {data['no_box']}")
    if features := data.get("local_features"):
        lines.append(f"  local features: {features['keypoints']} keypoints of {features['photos']} photos, "
                     f"{features['bytes'] / 1e6:.1f} MB in {features['files']} file(s)")  # fmt: skip
        lines.append(f"    {local_features.no_keypoints_note(features.get('no_keypoints'))}")
    else:
        lines.append("  local features: none (build-tfrecords add-local-features adds them)")
    if n_reused:
        lines.append(f"  reused {n_reused} of {len(shards)} shard(s) from an earlier run")
    lines.append(f"  manifest: {manifest_path}")
    return "\n".join(lines)
