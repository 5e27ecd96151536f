"""Builder metadata at full scale: the real Happywhale CSVs (51,033 train rows, no images) end to end."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tfrecords_builder.folds import assign_folds
from tfrecords_builder.tables import (
    label_maps,
    load_test_table,
    load_train_table,
    photo_counts,
    read_boxes_csv,
    read_csv_table,
)
from tfwhale.imaging.crop_box import parse_box_text


def happywhale_dir() -> Path:
    """TFWHALE_SHARED_DATA may name the shared data folder or its happywhale/ folder."""
    if root := os.environ.get("TFWHALE_SHARED_DATA"):
        candidates = [Path(root), Path(root) / "happywhale"]
    else:
        candidates = [Path(__file__).resolve().parents[1].parent / "shared/data/happywhale"]
    for folder in candidates:
        if (folder / "train2.csv").exists():
            return folder
    pytest.skip(f"real Happywhale metadata not found in {[str(c) for c in candidates]}")


@pytest.fixture(scope="module")
def data() -> Path:
    return happywhale_dir()


@pytest.fixture(scope="module")
def train(data):
    table, rejects = load_train_table(str(data / "train2.csv"), "images", check_files=False)
    assert rejects == []
    return table


@pytest.fixture(scope="module")
def folds(train):
    return assign_folds(
        train["individual_id"].tolist(), n_folds=5, seed=0, image_names=train["image"].tolist()
    )


def test_every_row_is_read_and_species_are_fixed(data, train):
    raw = read_csv_table(str(data / "train2.csv"), ["image", "species", "individual_id"])
    assert len(raw) == len(train) == 51_033
    assert raw["species"].nunique() == 30
    assert train["species"].nunique() == 26
    assert train["row"].tolist() == list(range(2, 51_035))


def test_label_maps_at_scale(train):
    individuals, species = label_maps(train)
    assert len(individuals) == 15_587 and individuals == sorted(individuals)
    assert len(species) == 26 and "bottlenose_dolpin" not in species
    counts = photo_counts(train)
    assert sum(counts.values()) == 51_033
    assert sum(count == 1 for count in counts.values()) == 9_258


def test_every_detic_box_parses(train):
    boxes = [parse_box_text(text) for text in train["box_text"]]
    empty = sum(box is None for box in boxes)
    assert empty == 15_362  # rows where Detic found nothing
    assert all(x2 > x1 and y2 > y1 for x1, y1, x2, y2 in filter(None, boxes))


def test_folds_at_scale(train, folds):
    assert folds.shape == (51_033,) and set(folds.tolist()) == {0, 1, 2, 3, 4}
    sizes = np.bincount(folds, minlength=5)
    assert np.abs(sizes - sizes.mean()).max() <= 0.02 * sizes.mean()
    per_individual: dict[str, np.ndarray] = {}
    for individual, fold in zip(train["individual_id"], folds, strict=True):
        per_individual.setdefault(individual, np.zeros(5, dtype=int))[fold] += 1
    for individual, counts in per_individual.items():
        assert counts.max() - counts.min() <= 1, individual
    pairs = [counts for counts in per_individual.values() if counts.sum() == 2]
    assert len(pairs) == 3_091 and all(np.count_nonzero(counts) == 2 for counts in pairs)
    singleton_folds = [int(np.argmax(c)) for c in per_individual.values() if c.sum() == 1]
    per_fold = Counter(singleton_folds)
    assert max(per_fold.values()) - min(per_fold.values()) <= 0.02 * len(singleton_folds) / 5


def test_test2_boxes_at_scale(data):
    test, rejects = load_test_table("images", str(data / "test2.csv"), check_files=False)
    assert rejects == [] and len(test) == 27_956
    boxes = [parse_box_text(text) for text in test["box_text"]]
    assert sum(box is not None for box in boxes) == 20_004
    assert read_boxes_csv(str(data / "test2.csv")) == dict(zip(test["image"], boxes, strict=True))


@pytest.mark.parametrize(
    ("name", "with_box", "confident"),
    [("fullbody_test_charm.csv", 27_954, 26_966), ("backfin_test_charm.csv", 27_454, 21_633)],
)
def test_yolo_charm_boxes_at_scale(data, name, with_box, confident):
    every = read_boxes_csv(str(data / name))
    assert len(every) == 27_956
    assert sum(box is not None for box in every.values()) == with_box
    above_half = read_boxes_csv(str(data / name), min_conf=0.5)
    assert sum(box is not None for box in above_half.values()) == confident
