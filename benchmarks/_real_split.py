"""Helper of the real-photo benchmarks (quality_real.py and those built on it): a folder of ID/photo
images -> a seeded identification task, and the command-line arguments that name it.

Known individuals (at least `min_photos` photos) give one held-out query photo each; about `new_share`
of the queries show individuals left out of training altogether (their truth is new_individual). The
task is written in the Kaggle layout build-tfrecords reads: train.csv, train_images/, test_images/,
plus test_solution.csv (image, individual_id) for predict --solution. Images are symlinked, not copied.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

SHARED_DATA = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
)
NEW_INDIVIDUAL = "new_individual"  # the answer for a photo of an individual absent from training
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def add_task_arguments(
    parser: argparse.ArgumentParser,
    data: str,
    work: str,
    species: str | None = None,
    work_help: str = "working folder, kept between runs",
) -> None:
    """--photos (default: the shared photo set `data`, e.g. 'lion'), --species (for a script that writes
    a task: the species its train.csv names; default `species`) and --work (default `work`)."""
    add = parser.add_argument
    photos = os.path.join(SHARED_DATA, data)
    add("--photos", default=photos, help=f"folder of ID/photo images (../shared/data/{data})")
    if species is not None:
        add("--species", default=species, help=f"species name written into train.csv ({species})")
    add("--work", default=work, help=f"{work_help} ({work})")


@dataclass(frozen=True)
class Split:
    train: dict[str, list[str]]  # individual -> its training photos (paths)
    known_queries: dict[str, str]  # individual -> its held-out query photo
    new_queries: dict[str, str]  # individual (absent from training) -> its query photo

    @property
    def queries(self) -> list[tuple[str, str]]:
        """(photo, truth) of every query, known first; new ones answer new_individual."""
        known = [(photo, individual) for individual, photo in sorted(self.known_queries.items())]
        new = [(photo, NEW_INDIVIDUAL) for _, photo in sorted(self.new_queries.items())]
        return known + new


def read_photo_folder(root: str) -> dict[str, list[str]]:
    """individual -> sorted photo paths, the individual being each photo's folder name (ID/photo, also
    nested as in split/ID/photo). ValueError when there is no photo or one name is two folders."""
    photos: dict[str, list[str]] = {}
    where: dict[str, str] = {}
    for folder, _, names in sorted(os.walk(root)):
        images = sorted(n for n in names if n.lower().endswith(IMAGE_SUFFIXES))
        if not images:
            continue
        individual = os.path.basename(folder)
        if folder == root:
            raise ValueError(f"{root}: photos lie directly in the folder; expected ID/photo sub-folders")
        if individual in where and where[individual] != folder:
            raise ValueError(f"individual {individual!r} has two folders: {where[individual]} and {folder}")
        where[individual] = folder
        photos[individual] = [os.path.join(folder, n) for n in images]
    if not photos:
        raise ValueError(f"{root}: no photos ({', '.join(IMAGE_SUFFIXES)}) in ID/ sub-folders")
    return photos


def make_split(
    photos: Mapping[str, list[str]], new_share: float = 0.2, min_photos: int = 3, seed: int = 0
) -> Split:
    """Seeded split: among individuals with >= min_photos photos, round(new_share x their count) become
    new (all photos out of training, one is the query); each of the others gives one query photo and keeps
    the rest (>= min_photos - 1) for training. Individuals with fewer photos only train."""
    if not 0 <= new_share < 1:
        raise ValueError(f"new_share must be in [0, 1), got {new_share}")
    if min_photos < 2:
        raise ValueError(f"min_photos must be at least 2 (a query and a training photo), got {min_photos}")
    rng = np.random.default_rng(seed)
    eligible = sorted(i for i, p in photos.items() if len(p) >= min_photos)
    if not eligible:
        raise ValueError(f"no individual has at least {min_photos} photos")
    n_new = round(new_share * len(eligible))
    new = set(rng.choice(eligible, size=n_new, replace=False).tolist()) if n_new else set()
    train, known, new_queries = {}, {}, {}
    for individual in sorted(photos):
        own = list(photos[individual])
        pick = own[int(rng.integers(len(own)))]
        if individual in new:
            new_queries[individual] = pick
        elif individual in eligible:
            known[individual] = pick
            train[individual] = [p for p in own if p != pick]
        else:
            train[individual] = own
    return Split(train, known, new_queries)


def _linked_name(individual: str, path: str) -> str:
    # photo names repeat across individuals (Portrait.png): prefix the individual
    return f"{individual}__{os.path.basename(path)}".replace(" ", "_")


def write_task(split: Split, out: str, species: str = "animal") -> dict[str, str]:
    """The Kaggle layout under `out` (train.csv, train_images/, test_images/, test_solution.csv).
    Returns those paths; an existing complete task (test_solution.csv is written last) is kept."""
    paths = {
        "train_csv": os.path.join(out, "train.csv"),
        "train_images": os.path.join(out, "train_images"),
        "test_images": os.path.join(out, "test_images"),
        "solution": os.path.join(out, "test_solution.csv"),
    }
    for folder in (paths["train_images"], paths["test_images"]):
        os.makedirs(folder, exist_ok=True)
    rows = ["image,species,individual_id"]
    for individual, own in sorted(split.train.items()):
        for path in own:
            name = _linked_name(individual, path)
            _link(path, os.path.join(paths["train_images"], name))
            rows.append(f"{name},{species},{individual}")
    solution = ["image,individual_id"]
    for path, truth in split.queries:
        individual = os.path.basename(os.path.dirname(path))
        name = _linked_name(individual, path)
        _link(path, os.path.join(paths["test_images"], name))
        solution.append(f"{name},{truth}")
    _write(paths["train_csv"], rows)
    _write(paths["solution"], solution)
    return paths


def _link(source: str, target: str) -> None:
    if not os.path.lexists(target):
        os.symlink(os.path.abspath(source), target)


def _write(path: str, lines: list[str]) -> None:
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
