"""Day-one gallery, input side: a photo folder (ID/photo folders or the Kaggle layout) -> the builder's flags.

`ID/photo` folders get the training CSV build-tfrecords reads (image, species, individual_id), written
into the gallery folder; the Kaggle layout (train.csv + train_images/, boxes optional) is read as it is.
Either way the photos become records through build-tfrecords itself, so the catalogue app, export and a
later fine-tune all start from the same kind of build.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass

from tfwhale.core import files

TRAIN_CSV = "train.csv"  # in the gallery folder, for ID/photo folders (the Kaggle layout brings its own)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class GalleryInputError(ValueError):
    """A photo folder no gallery can be made from; the message names the folder or file."""


@dataclass(frozen=True)
class PhotoSet:
    """Where the photos are and how build-tfrecords is to read them."""

    layout: str  # "folders" (ID/photo) or "kaggle" (train.csv + train_images/)
    builder_inputs: tuple[str, ...]  # build-tfrecords input flags
    photos_per_individual: dict[str, int]
    images_root: str = ""  # where the records' image names are found (the original photos)
    boxed: bool = False  # the photo table has box columns (build-tfrecords crops to them)


def find_photos(photos_dir: str, gallery_dir: str, species: str) -> PhotoSet:
    """The photo set under photos_dir; for ID/photo folders, GALLERY/train.csv is written for the builder."""
    if not files.isdir(photos_dir):
        raise GalleryInputError(f"{photos_dir}: photo folder not found")
    if files.exists(files.join(photos_dir, "train.csv")):
        return _kaggle_layout(photos_dir)
    return _id_folders(photos_dir, gallery_dir, species)


def _kaggle_layout(photos_dir: str) -> PhotoSet:
    images = files.join(photos_dir, "train_images")
    if not files.isdir(images):
        raise GalleryInputError(
            f"{photos_dir}: has train.csv but no train_images/ folder (the Kaggle layout needs both)"
        )
    counts, columns = _csv_counts(files.join(photos_dir, "train.csv"))
    check_counts(photos_dir, counts)
    boxed = bool({"box", "bbox", "x1"} & set(columns))
    return PhotoSet("kaggle", ("--data", photos_dir), counts, images, boxed)


def _csv_counts(path: str) -> tuple[dict[str, int], list[str]]:
    """Photos per individual, and the table's columns."""
    rows = csv.DictReader(io.StringIO(files.read_text(path)))
    columns = list(rows.fieldnames or [])
    if "individual_id" not in columns:
        raise GalleryInputError(f"{path}: no individual_id column (expected image, species, individual_id)")
    ids = (row["individual_id"].strip() for row in rows if (row["individual_id"] or "").strip())
    return dict(Counter(ids)), columns


def _id_folders(photos_dir: str, gallery_dir: str, species: str) -> PhotoSet:
    rows = []
    for individual in sorted(files.listdir(photos_dir)):
        folder = files.join(photos_dir, individual)
        if individual.startswith(".") or not files.isdir(folder):
            continue
        for name in sorted(files.listdir(folder)):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                rows.append((f"{individual}/{name}", species, individual))
    if not rows:
        raise GalleryInputError(
            f"{photos_dir}: no photos found. Expected one folder per individual holding its photos "
            f"({', '.join(IMAGE_EXTENSIONS)}), e.g. {photos_dir}/ID1/a.jpg, or the Kaggle layout "
            "(train.csv + train_images/)"
        )
    counts = dict(Counter(individual for _, _, individual in rows))
    check_counts(photos_dir, counts)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("image", "species", "individual_id"))
    writer.writerows(rows)
    files.makedirs(gallery_dir)
    train_csv = files.join(gallery_dir, TRAIN_CSV)
    files.write_text(train_csv, buffer.getvalue())
    return PhotoSet("folders", ("--train-csv", train_csv, "--train-images", photos_dir), counts, photos_dir)


def check_counts(photos_dir: str, counts: dict[str, int]) -> None:
    """A gallery needs photos, and an individual with two of them to learn where new_individual goes."""
    if not counts:
        raise GalleryInputError(f"{photos_dir}: no photos of any individual")
    if max(counts.values()) < 2:
        raise GalleryInputError(
            f"{photos_dir}: {len(counts)} individual(s), none with 2 or more photos; a photo can only be "
            "matched to another photo of its individual: add a second photo of some of them"
        )


def local_path(path: str) -> str:
    """An absolute path for local folders (a gallery names them; serve may run elsewhere); URLs as is."""
    return path if "://" in path else os.path.abspath(path)
