"""A tiny finished records build for tests: shards + a manifest.json that records.load_manifest accepts.

Individual `label` is "whale_{label:03d}", every one of its photos lies in fold label % n_folds and is
named "w{label:03d}_{photo:02d}.jpg"; species_label is label % 2. Each photo is noise around a red
channel level of label_color(label), so a model that averages pixels recovers the label (alignment tests).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from tfwhale.contracts import records
from tfwhale.core import files
from tfwhale.imaging.photo_crop import ImageSettings

SPECIES = ("beluga", "orca")
DEFAULT_PHOTOS = (4, 1, 3, 5, 2, 4)


def label_color(label: int) -> float:
    return 30.0 + 30.0 * (label % 8)


def _jpeg(rng: np.random.Generator, size: int, red: float) -> bytes:
    pixels = rng.uniform(0, 255, (size, size, 3))
    pixels[..., 0] = np.clip(red + rng.normal(0, 8, (size, size)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _write_shards(root: str, prefix_name, examples: list[bytes], shard_size: int, split: str, fold):
    entries = []
    for index, start in enumerate(range(0, len(examples), shard_size)):
        name = prefix_name(index)
        path = files.join(root, name)
        chunk = examples[start : start + shard_size]
        with tf.io.TFRecordWriter(path) as writer:
            for example in chunk:
                writer.write(example)
        entry = {"name": name, "split": split, "count": len(chunk), "sha256": files.sha256(path)}
        entry.update(
            {"bytes": files.size(path)} if fold is None else {"fold": fold, "bytes": files.size(path)}
        )
        entries.append(entry)
    return entries


def make_records(
    tmp_path,
    n_individuals: int = 6,
    photos: int | Sequence[int] = DEFAULT_PHOTOS,
    size: int = 32,
    n_folds: int = 2,
    with_test: bool = True,
    n_test: int = 5,
    shard_size: int = 4,
    seed: int = 0,
) -> str:
    """Write the build into tmp_path/records and return that folder (a str, as the stages take)."""
    root = str(tmp_path / "records")
    files.makedirs(root)
    rng = np.random.default_rng(seed)
    counts = [photos] * n_individuals if isinstance(photos, int) else list(photos)
    counts = [counts[i % len(counts)] for i in range(n_individuals)]
    individuals = [f"whale_{label:03d}" for label in range(n_individuals)]
    by_fold: dict[int, list[bytes]] = {fold: [] for fold in range(n_folds)}
    for label, count in enumerate(counts):
        for photo in range(count):
            example = records.encode_train_example(
                _jpeg(rng, size, label_color(label)),
                f"w{label:03d}_{photo:02d}.jpg",
                individuals[label],
                label,
                SPECIES[label % 2],
                label % 2,
                label % n_folds,
            )
            by_fold[label % n_folds].append(example)
    shards = []
    for fold, examples in by_fold.items():
        shards += _write_shards(
            root, lambda i, f=fold: records.train_shard_name(f, i), examples, shard_size, "train", fold
        )
    if with_test:
        tests = [records.encode_test_example(_jpeg(rng, size, 128.0), f"q{i:03d}.jpg") for i in range(n_test)]
        shards += _write_shards(root, records.test_shard_name, tests, shard_size, "test", None)
    manifest = {
        "schema_version": records.SCHEMA_VERSION,
        "image_size": size,
        "crop": ImageSettings(size).manifest_fields(),
        "folds": {"n_folds": n_folds, "seed": seed, "counts": {str(f): len(e) for f, e in by_fold.items()}},
        "labels": {
            "individuals": individuals,
            "species": list(SPECIES),
            "photo_counts": dict(zip(individuals, counts, strict=True)),
        },
        "shards": shards,
    }
    files.write_json(files.join(root, records.MANIFEST_NAME), manifest)
    return root
