"""build-tfrecords add-local-features: local features for a build made without them, shard by shard,
without rebuilding the images; resumable (a shard's file written whole is kept)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Sequence
from contextlib import closing
from typing import Any

import tensorflow as tf
from tqdm import tqdm

from tfrecords_builder import imaging, local_features, manifest, writer
from tfrecords_builder.errors import BuildInputError
from tfrecords_builder.resume import parts_path
from tfrecords_builder.tables import load_test_table, load_train_table, tables_are_fatal
from tfwhale.contracts import records
from tfwhale.contracts.build_sources import BuildSources
from tfwhale.contracts.local_features import NO_FEATURES
from tfwhale.core import files
from tfwhale.imaging.crop_box import Box, parse_box_text
from tfwhale.matching.features import SiftSettings

logger = logging.getLogger(__name__)

FEATURES_PARTS = "features"  # .parts/features/<shard>.json: a feature file written whole, and its entry
STATE_NAME = "settings.json"


def add_local_features(args: argparse.Namespace) -> str:
    """Write every shard's missing feature file, then list them all in manifest.json; a summary line."""
    built = records.load_manifest(args.out)
    sift = local_features.sift_settings(args.match_size)
    if built.data.get("local_features"):
        if _all_whole(args.out, built.data["shards"]):
            return (
                f"{args.out}: already has its local features ({built.data['local_features']['files']} files)"
            )
        sift = SiftSettings.from_stored(built.data["local_features"]["sift"])
    sift = _same_as_started(args.out, sift, args.match_size is not None)
    photos = photo_sources(built, args.images, args.test_images)
    workers = args.workers or imaging.default_workers()
    entries, done = [], 0
    pool = imaging.start_pool(workers)
    try:
        bar = tqdm(total=built.count("train") + built.count("test"), unit="img", desc="local features",
                   disable=None if not args.quiet else True)  # fmt: skip
        with bar:
            for shard in built.data["shards"]:
                entry = _finished(args.out, shard["name"])
                if entry is None:
                    entry = _shard_features(
                        args.out, shard, photos, built.image_settings, sift, workers, pool
                    )
                    done += 1
                bar.update(int(shard["count"]))
                entries.append(entry)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    data = dict(built.data)
    data["shards"] = [
        {**shard, "features": entry} for shard, entry in zip(data["shards"], entries, strict=True)
    ]
    data["local_features"] = local_features.manifest_section(entries, local_features.settings_entry(sift))
    manifest.write_manifest(args.out, data)  # atomic: readers see the old manifest or the whole new one
    section = data["local_features"]
    return (f"{args.out}: local features of {section['photos']} photos in {len(entries)} file(s) "
            f"({done} written now, {len(entries) - done} kept), {section['bytes'] / 1e6:.1f} MB; "
            f"{local_features.no_keypoints_note(section.get('no_keypoints'))}")  # fmt: skip


def _all_whole(out: str, shards: Sequence[dict[str, Any]]) -> bool:
    return all(shard.get("features") and local_features.intact(out, shard["features"]) for shard in shards)


def _same_as_started(out: str, sift: SiftSettings, given: bool) -> SiftSettings:
    """An interrupted run resumes with the settings it started with (a different --match-size is refused)."""
    path = parts_path(out, f"{FEATURES_PARTS}/{STATE_NAME}")
    if not files.exists(path):
        files.makedirs(parts_path(out, FEATURES_PARTS))
        files.write_json(path, local_features.settings_entry(sift))
        return sift
    started = SiftSettings.from_stored(files.read_json(path))
    if given and started != sift:
        raise BuildInputError(
            f"{out}: an earlier add-local-features started with {started}; run it again without "
            f"--match-size to finish, or delete {parts_path(out, FEATURES_PARTS)} to start over"
        )
    return started


def _finished(out: str, shard_name: str) -> dict[str, Any] | None:
    """The entry of a feature file an earlier run wrote whole (its sidecar, and the file's sha256)."""
    sidecar = parts_path(out, f"{FEATURES_PARTS}/{shard_name}.json")
    if not files.exists(sidecar):
        return None
    entry = files.read_json(sidecar)
    if local_features.intact(out, entry):
        return entry
    logger.warning("%s: changed or cut short since it was written; taking it again", entry["name"])
    return None


def photo_sources(built: records.Manifest, images: str | None, test_images: str | None) -> dict:
    """image name -> (path, box) of every photo the build read, from the tables it recorded (their
    sha256 must still match: the boxes crop the photos) and the photo folders (given, or the build's)."""
    sources = BuildSources.of_manifest(built, strict=True)
    sources.check_unchanged()
    train, _ = load_train_table(sources.path("train_csv"), images or sources.folder("train"))
    tables = [train]
    if sources.folder("test") is not None:
        tables.append(load_test_table(test_images or sources.folder("test"), sources.path("test_csv"))[0])
    with tables_are_fatal():
        boxes = sources.box_table()
    found: dict[str, tuple[str, Box | None]] = {}
    for table in tables:
        for row in table.itertuples(index=False):
            box = boxes.get(row.image) if boxes is not None else parse_box_text(row.box_text)
            found[row.image] = (row.path, box)
    return found


def shard_image_names(path: str) -> list[str]:
    """The image names of a shard's records, in order."""
    feature = {"image_name": tf.io.FixedLenFeature([], tf.string)}
    names = []
    for serialized in tf.data.TFRecordDataset(path):
        names.append(tf.io.parse_single_example(serialized, feature)["image_name"].numpy().decode())
    return names


def _tasks(names: Sequence[str], photos: dict) -> Iterator[imaging.ImageTask]:
    for name in names:
        if name not in photos:
            yield imaging.ImageTask(name, b"", None, error="photo not found in the build's tables or folder")
            continue
        path, box = photos[name]
        yield writer.image_task(writer.PlanItem(name, path, None, box))


def _shard_features(out, shard, photos, image_settings, sift, workers, pool) -> dict[str, Any]:
    """Take one shard's features (rows in record order), write its file atomically, then its sidecar."""
    names = shard_image_names(files.join(out, shard["name"]))
    found = []
    results = writer.process_in_order(
        _tasks(names, photos), image_settings, workers, pool, sift, imaging.features_chunk
    )
    with closing(results):
        for name, result in zip(names, results, strict=True):
            if result.features is None:
                logger.warning("%s: no local features (%s)", name, result.error)
            found.append(result.features if result.features is not None else NO_FEATURES)
    entry = local_features.write_features(out, shard["name"], names, found)
    files.write_json(parts_path(out, f"{FEATURES_PARTS}/{shard['name']}.json"), entry)
    return entry
