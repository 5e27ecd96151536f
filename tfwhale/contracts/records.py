"""The TFRecord contract between builder and trainer: feature names, types, shard names, manifest."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from tfwhale.contracts.individual_id import id_problem
from tfwhale.core import files
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.imaging.photo_crop import ImageSettings

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REJECTS_NAME = "rejects.csv"
SHARD_SUFFIX = ".tfrec"
FEATURES_SUFFIX = ".features.npz"  # a shard's local features (contracts.local_features), beside it
__all__ = ["NEW_INDIVIDUAL", "id_problem"]  # the id rule lives in contracts.individual_id

TRAIN_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "image_name": tf.io.FixedLenFeature([], tf.string),
    "individual_id": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "species": tf.io.FixedLenFeature([], tf.string),
    "species_label": tf.io.FixedLenFeature([], tf.int64),
    "fold": tf.io.FixedLenFeature([], tf.int64),
}
TEST_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "image_name": tf.io.FixedLenFeature([], tf.string),
}

_TRAIN_SHARD = re.compile(r"^train-fold(\d+)-(\d+)\.tfrec$")
_TEST_SHARD = re.compile(r"^test-(\d+)\.tfrec$")


def label_problem(label: str) -> str | None:
    """Why `label` cannot be written into a submission, or None when it can (new ids follow the stricter
    id_problem; this reads answers of records built before it).

    Kaggle's submission separates the 5 labels of a row by spaces inside one CSV field, so a label must
    not hold whitespace (any Unicode space), a comma or a double quote, nor control characters; and
    new_individual is the answer "none of these", not an individual. Other Unicode is fine.
    """
    if label == NEW_INDIVIDUAL:
        return f"'{NEW_INDIVIDUAL}' is reserved for the answer 'not in the gallery'"
    for char in label:
        if char.isspace() or char in ',"' or unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            name = unicodedata.name(char, f"U+{ord(char):04X}")
            return (
                f"contains {char!r} ({name}); Kaggle's submission format separates labels by spaces, "
                "so an individual_id may not hold whitespace, commas, quotes or control characters"
            )
    return None


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_train_example(
    image: bytes,
    image_name: str,
    individual_id: str,
    label: int,
    species: str,
    species_label: int,
    fold: int,
) -> bytes:
    """One serialized training example; `image` is JPEG bytes."""
    features = {
        "image": _bytes(image),
        "image_name": _bytes(image_name.encode()),
        "individual_id": _bytes(individual_id.encode()),
        "label": _int(label),
        "species": _bytes(species.encode()),
        "species_label": _int(species_label),
        "fold": _int(fold),
    }
    return _serialize(features)


def encode_test_example(image: bytes, image_name: str) -> bytes:
    features = {"image": _bytes(image), "image_name": _bytes(image_name.encode())}
    return _serialize(features)


def _serialize(features: dict[str, tf.train.Feature]) -> bytes:
    # deterministic: feature-map entries sorted by key. Otherwise protobuf (upb) writes them in an order that
    # changes from process to process, and the same build run twice, or on Beam's workers, differs in bytes.
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString(deterministic=True)


def parse_train_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    return tf.io.parse_single_example(serialized, TRAIN_FEATURES)


def parse_test_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    return tf.io.parse_single_example(serialized, TEST_FEATURES)


def decode_image(jpeg: tf.Tensor, size: int) -> tf.Tensor:
    """JPEG bytes -> uint8 [size, size, 3] with a static shape (TPU-safe)."""
    image = tf.io.decode_jpeg(jpeg, channels=3)
    return tf.ensure_shape(image, [size, size, 3])


def train_shard_name(fold: int, index: int) -> str:
    return f"train-fold{fold}-{index:04d}{SHARD_SUFFIX}"


def test_shard_name(index: int) -> str:
    return f"test-{index:04d}{SHARD_SUFFIX}"


def features_name(shard_name: str) -> str:
    """The local-feature file of a shard: its photos' SIFT, rows in the shard's record order."""
    return shard_name.removesuffix(SHARD_SUFFIX) + FEATURES_SUFFIX


def shard_fold(name: str) -> int | None:
    """The fold a training shard holds, read from its name; None for test shards."""
    match = _TRAIN_SHARD.match(files.basename(name))
    return int(match.group(1)) if match else None


def is_test_shard(name: str) -> bool:
    return bool(_TEST_SHARD.match(files.basename(name)))


class ManifestError(ValueError):
    """A records folder that is missing, unfinished or from another schema."""


@dataclass(frozen=True)
class FeatureFile:
    """One shard's local-feature file as the manifest lists it (the shard entry's "features")."""

    shard: str
    name: str
    sha256: str
    bytes: int
    photos: int
    keypoints: int
    no_keypoints: int | None = None  # photos that gave none (None: a build from before they were counted)


@dataclass(frozen=True)
class RecordFeatures:
    """The local features of a build (manifest "local_features"): how they were taken (the
    matching.features.SiftSettings fields) and one file per shard."""

    sift: dict[str, Any]
    files: tuple[FeatureFile, ...]

    @property
    def no_keypoints(self) -> int | None:
        """Photos that gave no keypoints (the re-rank matches them by the embedding alone); None: unknown."""
        if any(file.no_keypoints is None for file in self.files):
            return None
        return sum(file.no_keypoints or 0 for file in self.files)


@dataclass(frozen=True)
class Manifest:
    """What a finished build says about itself (see tfrecords_builder.manifest for the writer)."""

    root: str
    data: dict[str, Any]
    sha256: str = ""  # of manifest.json: runs record which build they were trained on

    @property
    def image_size(self) -> int:
        return int(self.data["image_size"])

    @property
    def image_settings(self) -> ImageSettings:
        """How the build cropped, resized and encoded its photos: identify crops new photos the same way."""
        crop = self.data.get("crop")
        if not crop:
            raise ManifestError(
                f"{self.root}: the manifest has no crop settings (not made by build-tfrecords?)"
            )
        return ImageSettings.from_manifest(self.image_size, crop)

    @property
    def n_folds(self) -> int:
        return int(self.data["folds"]["n_folds"])

    @property
    def individuals(self) -> list[str]:
        """individual_id by integer label."""
        return list(self.data["labels"]["individuals"])

    @property
    def species(self) -> list[str]:
        return list(self.data["labels"]["species"])

    @property
    def photo_counts(self) -> list[int]:
        """Training photos per individual, by integer label."""
        counts = self.data["labels"]["photo_counts"]
        return [int(counts[name]) for name in self.individuals]

    @property
    def labels_sha256(self) -> str:
        """Fingerprint of the label maps: runs and records must agree on what label i means."""
        text = json.dumps(self.data["labels"], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def shards(self, split: str, folds: list[int] | None = None) -> list[dict[str, Any]]:
        """Shard entries of a split ("train" or "test"), optionally only of some folds."""
        return [
            shard
            for shard in self.data["shards"]
            if shard["split"] == split and (folds is None or shard.get("fold") in folds)
        ]

    def shard_paths(self, split: str, folds: list[int] | None = None) -> list[str]:
        return [files.join(self.root, s["name"]) for s in self.shards(split, folds)]

    def count(self, split: str, folds: list[int] | None = None) -> int:
        return sum(int(s["count"]) for s in self.shards(split, folds))

    @property
    def local_features(self) -> RecordFeatures | None:
        """The build's local features, None when it was made without them (build-tfrecords
        add-local-features adds them); ManifestError when a shard has none listed."""
        section = self.data.get("local_features")
        if not section:
            return None
        found = []
        for shard in self.data["shards"]:
            entry = shard.get("features")
            if not entry:
                raise ManifestError(f"{self.root}: shard {shard['name']} has no local-feature file listed; "
                                    f"run build-tfrecords add-local-features --out {self.root}")  # fmt: skip
            no_keypoints = entry.get("no_keypoints")
            found.append(FeatureFile(shard["name"], entry["name"], entry["sha256"], int(entry["bytes"]),
                                     int(entry["photos"]), int(entry["keypoints"]),
                                     None if no_keypoints is None else int(no_keypoints)))  # fmt: skip
        return RecordFeatures(dict(section["sift"]), tuple(found))


def load_manifest(root: str) -> Manifest:
    """Read and check a finished build; clear errors for unfinished or foreign builds."""
    path = files.join(root, MANIFEST_NAME)
    if not files.exists(path):
        hint = " (the build is unfinished: run build-tfrecords again to complete it)"
        raise ManifestError(f"{path} not found{hint if files.exists(root) else ''}")
    text = files.read_text(path)
    data = json.loads(text)
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: records schema version {version!r}, this tfwhale reads version "
            f"{SCHEMA_VERSION}; rebuild the records with this version's build-tfrecords"
        )
    return Manifest(root=root, data=data, sha256=hashlib.sha256(text.encode()).hexdigest())


def damaged_shards(manifest: Manifest) -> list[str]:
    """Shards of a finished build whose size or sha256 differs from the manifest (missing ones included).

    TensorFlow's DataLossError ("corrupted record at N") names no file; this finds the shard it meant.
    """

    def intact(entry: dict[str, Any]) -> bool:
        path = files.join(manifest.root, entry["name"])
        if not files.exists(path) or files.size(path) != int(entry["bytes"]):
            return False
        return files.sha256(path) == entry["sha256"]

    return [entry["name"] for entry in manifest.data["shards"] if not intact(entry)]


def records_error_message(root: str, error: tf.errors.OpError) -> str | None:
    """One line for a TF error met while reading the records under `root`: a damaged record (which shard,
    what next) or a storage outage (the same command resumes); None for any other error (a bug: raise it)."""
    if isinstance(error, tf.errors.DataLossError):
        return read_error_message(root, error)
    if files.is_storage_error(error):
        return files.storage_error_message(error)
    return None


def read_error_message(root: str, error: Exception) -> str:
    """One line for a record that cannot be read during training or prediction: which shard, what next."""
    detail = getattr(error, "message", str(error)).splitlines()[0]
    detail = re.sub(r"^\{\{[^}]*\}\}\s*", "", detail).split(" [Op:")[0]  # drop TF's op decoration
    try:
        damaged = damaged_shards(load_manifest(root))
    except (ManifestError, OSError, tf.errors.OpError):
        damaged = []
    where = f"damaged shard(s): {', '.join(damaged)}" if damaged else "no shard differs from its sha256"
    return (
        f"{root}: a record cannot be read ({detail}); {where}. Run `build-tfrecords verify {root}`, then "
        "run the same build-tfrecords command again (it rebuilds shards whose sha256 is wrong)"
    )
