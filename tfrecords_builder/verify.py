"""build-tfrecords verify: re-read a finished build and check every shard and image against its manifest,
and every shard's local-feature file (sha256, readable, one row per record in the shard's order)."""

from __future__ import annotations

import logging
from typing import Any

import tensorflow as tf

from tfwhale.contracts import records
from tfwhale.contracts.local_features import LocalFeaturesError, load_feature_set
from tfwhale.core import files

logger = logging.getLogger(__name__)


def _check_bytes(path: str, entry: dict[str, Any]) -> list[str]:
    name = entry["name"]
    if files.size(path) != int(entry["bytes"]):
        return [f"{name}: {files.size(path)} bytes on disk, manifest says {entry['bytes']}"]
    if files.sha256(path) != entry["sha256"]:
        return [f"{name}: sha256 differs from the manifest (the file changed or is corrupt)"]
    return []


def _check_example(
    example: dict[str, tf.Tensor], entry: dict[str, Any], manifest: records.Manifest
) -> list[str]:
    """Problems of one decoded record: image shape, and for training records fold and labels."""
    size = manifest.image_size
    where = f"{entry['name']}: {example['image_name'].numpy().decode()}"
    problems = []
    shape = tuple(tf.io.decode_jpeg(example["image"], channels=3).shape)
    if shape != (size, size, 3):
        problems.append(f"{where}: image is {shape}, expected {(size, size, 3)}")
    if entry["split"] != "train":
        return problems
    fold, label = int(example["fold"]), int(example["label"])
    if fold != entry["fold"]:
        problems.append(f"{where}: fold {fold} inside a fold-{entry['fold']} shard")
    individual = example["individual_id"].numpy().decode()
    if not 0 <= label < len(manifest.individuals) or manifest.individuals[label] != individual:
        problems.append(f"{where}: label {label} does not belong to individual_id {individual!r}")
    species_label = int(example["species_label"])
    if not 0 <= species_label < len(manifest.species):
        problems.append(f"{where}: species_label {species_label} out of range")
    return problems


def _check_records(
    path: str, entry: dict[str, Any], manifest: records.Manifest, names: set[str], order: list[str]
) -> list[str]:
    """Decode every record of a shard; a record that cannot be read ends that shard's check. `order`
    receives the shard's image names in record order."""
    parse = records.parse_train_example if entry["split"] == "train" else records.parse_test_example
    problems: list[str] = []
    count = 0
    try:
        for serialized in tf.data.TFRecordDataset(path):
            example = parse(serialized)
            image_name = example["image_name"].numpy().decode()
            if image_name in names:
                problems.append(f"{entry['name']}: {image_name} appears more than once in the build")
            names.add(image_name)
            order.append(image_name)
            problems += _check_example(example, entry, manifest)
            count += 1
    except (tf.errors.OpError, ValueError) as error:
        message = getattr(error, "message", str(error)).splitlines()[0]
        return [*problems, f"{entry['name']}: record {count} cannot be read: {message}"]
    if count != int(entry["count"]):
        problems.append(f"{entry['name']}: {count} records, manifest says {entry['count']}")
    return problems


def _check_listing(out: str, manifest: records.Manifest) -> list[str]:
    listing = files.listdir(out)
    listed = {shard["name"] for shard in manifest.data["shards"]}
    on_disk = {name for name in listing if name.endswith(records.SHARD_SUFFIX)}
    problems = [f"{name}: listed in the manifest but missing" for name in sorted(listed - on_disk)]
    problems += [f"{name}: shard file not listed in the manifest" for name in sorted(on_disk - listed)]
    features = {s["features"]["name"] for s in manifest.data["shards"] if s.get("features")}
    on_disk = {name for name in listing if name.endswith(records.FEATURES_SUFFIX)}
    problems += [
        f"{name}: local-feature file not listed in the manifest" for name in sorted(on_disk - features)
    ]
    if manifest.data.get("local_features"):
        problems += [f"{s['name']}: no local-feature file listed, though the build has local features"
                     for s in manifest.data["shards"] if not s.get("features")]  # fmt: skip
    return problems


def _check_features(out: str, shard: dict[str, Any], order: list[str], no_keypoints: list[int]) -> list[str]:
    """A shard's local-feature file: present, its bytes and sha256 as listed, readable, and one row per
    record of the shard in the same order; its photos without keypoints are added to `no_keypoints`."""
    entry = shard["features"]
    path = files.join(out, entry["name"])
    if not files.exists(path):
        return [f"{entry['name']}: local-feature file listed in the manifest but missing"]
    problems = _check_bytes(path, entry)
    if problems:
        return problems
    try:
        features = load_feature_set(path)
    except LocalFeaturesError as error:
        return [f"{entry['name']}: {error}"]
    if list(features.names) != order:
        return [f"{entry['name']}: its {len(features)} photos are not the {len(order)} records of "
                f"{shard['name']} in order"]  # fmt: skip
    if len(features.descriptors) != int(entry["keypoints"]):
        return [f"{entry['name']}: {len(features.descriptors)} keypoints, manifest says {entry['keypoints']}"]
    no_keypoints.append(features.photos_without_keypoints)
    listed = entry.get("no_keypoints")  # absent in builds from before they were counted
    if listed is not None and int(listed) != no_keypoints[-1]:
        return [f"{entry['name']}: {no_keypoints[-1]} photos without keypoints, manifest says {listed}"]
    return []


def _check_totals(manifest: records.Manifest) -> list[str]:
    problems = []
    for fold, expected in manifest.data["folds"].get("counts", {}).items():
        found = manifest.count("train", [int(fold)])
        if found != int(expected):
            problems.append(f"manifest: fold {fold} counts {expected} images but its shards hold {found}")
    return problems


def verify_build(out: str, no_keypoints: list[int] | None = None) -> list[str]:
    """Every problem found in the build at `out` (empty list = good): missing, unlisted or changed shards
    and local-feature files, wrong counts, unreadable records, images that are not size x size x 3,
    labels that do not match, feature rows that are not the shard's records. no_keypoints: gets each
    checked feature file's count of photos that gave no keypoints (counted, not read from the manifest)."""
    no_keypoints = [] if no_keypoints is None else no_keypoints
    try:
        manifest = records.load_manifest(out)
    except records.ManifestError as error:
        return [str(error)]
    problems = _check_listing(out, manifest) + _check_totals(manifest)
    names: set[str] = set()
    for entry in manifest.data["shards"]:
        path = files.join(out, entry["name"])
        if not files.exists(path):
            continue
        logger.info("checking %s", entry["name"])
        problems += _check_bytes(path, entry)
        order: list[str] = []
        problems += _check_records(path, entry, manifest, names, order)
        if entry.get("features"):
            problems += _check_features(out, entry, order, no_keypoints)
    return problems
