"""benchmarks/_real_split.py: the real-photo benchmark's task (fast: no images decoded, no training)."""

from __future__ import annotations

import csv
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from _real_split import NEW_INDIVIDUAL, make_split, read_photo_folder, write_task

# 50 individuals with 3..9 photos, 5 with 1..2 (never queried)
COUNTS = {f"id{i:02d}": 3 + i % 7 for i in range(50)} | {f"few{i}": 1 + i % 2 for i in range(5)}


def photo_folder(root, counts=COUNTS, nested: bool = True) -> str:
    for i, (individual, count) in enumerate(sorted(counts.items())):
        folder = root / ("train" if i % 3 else "val") / individual if nested else root / individual
        folder.mkdir(parents=True)
        for photo in range(count):
            (folder / f"{individual}_Portrait{photo}.png").write_bytes(b"x")  # names repeat across ids
        (folder / "notes.txt").write_text("not a photo")
    return str(root)


def test_the_folder_is_read_as_id_photo_also_when_nested(tmp_path):
    photos = read_photo_folder(photo_folder(tmp_path))
    assert {k: len(v) for k, v in photos.items()} == COUNTS
    assert all(os.path.basename(os.path.dirname(p)) == k for k, v in photos.items() for p in v)


def test_bad_folders_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="no photos"):
        read_photo_folder(str(tmp_path))
    (tmp_path / "a" / "Ayo").mkdir(parents=True)
    (tmp_path / "b" / "Ayo").mkdir(parents=True)
    (tmp_path / "a" / "Ayo" / "1.png").write_bytes(b"x")
    (tmp_path / "b" / "Ayo" / "2.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="'Ayo' has two folders"):
        read_photo_folder(str(tmp_path))


def test_split_holds_out_one_query_per_known_individual_and_whole_new_individuals(tmp_path):
    photos = read_photo_folder(photo_folder(tmp_path))
    split = make_split(photos, new_share=0.2, min_photos=3, seed=0)
    eligible = {k for k, v in photos.items() if len(v) >= 3}
    assert len(split.new_queries) == 10  # 20% of the 50 individuals that can give a query
    assert set(split.known_queries) | set(split.new_queries) == eligible
    assert not set(split.known_queries) & set(split.new_queries)
    assert not set(split.new_queries) & set(split.train)  # new individuals: no training photo
    for individual, query in split.known_queries.items():
        assert query in photos[individual] and query not in split.train[individual]
        assert len(split.train[individual]) == len(photos[individual]) - 1 >= 2
    for individual in ("few0", "few1"):  # too few photos: training only
        assert split.train[individual] == photos[individual]
    truths = [truth for _, truth in split.queries]
    assert truths.count(NEW_INDIVIDUAL) == 10 and len(truths) == 50


def test_split_is_seeded(tmp_path):
    photos = read_photo_folder(photo_folder(tmp_path))
    assert make_split(photos, seed=1) == make_split(photos, seed=1)
    assert make_split(photos, seed=1).new_queries != make_split(photos, seed=2).new_queries
    assert make_split(photos, new_share=0).new_queries == {}
    with pytest.raises(ValueError, match="new_share"):
        make_split(photos, new_share=1.0)
    with pytest.raises(ValueError, match="at least 30 photos"):
        make_split(photos, min_photos=30)


def test_the_task_is_written_in_the_kaggle_layout(tmp_path):
    photos = read_photo_folder(photo_folder(tmp_path / "photos", nested=False))
    split = make_split(photos, seed=0)
    paths = write_task(split, str(tmp_path / "task"), species="lion")
    with open(paths["train_csv"]) as f:
        train = list(csv.DictReader(f))
    with open(paths["solution"]) as f:
        solution = list(csv.DictReader(f))
    assert len(train) == sum(len(v) for v in split.train.values())
    assert {row["species"] for row in train} == {"lion"}
    assert sorted(os.listdir(paths["train_images"])) == sorted(row["image"] for row in train)
    assert sorted(os.listdir(paths["test_images"])) == sorted(row["image"] for row in solution)
    assert len({row["image"] for row in train + solution}) == len(train) + len(solution)  # unique names
    for row in solution:  # each query links to its own photo, truth as split says
        target = os.path.realpath(os.path.join(paths["test_images"], row["image"]))
        individual = os.path.basename(os.path.dirname(target))
        expected = NEW_INDIVIDUAL if individual in split.new_queries else individual
        assert row["individual_id"] == expected
        assert target == os.path.realpath((split.known_queries | split.new_queries)[individual])
    assert write_task(split, str(tmp_path / "task"), species="lion") == paths  # rerun keeps it
