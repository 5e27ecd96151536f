"""Stage 0 for demos and tests: write a synthetic photo-ID data set in the Kaggle Happywhale layout.

    python -m tfwhale.synthetic OUT_DIR [--individuals 60] [--seed 0] [--image-size 384] ...

OUT_DIR gets train.csv (image,species,individual_id), train_images/, test_images/, boxes.csv (image,box with
Detic-style "x1 y1 x2 y2" pixel boxes, a few left empty like missed detections), test_solution.csv
(image,individual_id; new_individual for animals absent from train), test_full.csv (test images with their
true species and individual_id, for checks) and sample_submission.csv (image,predictions).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from tfwhale.core import files
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.synthetic.identity import SPECIES, draw_template, make_identity
from tfwhale.synthetic.render import render_photo

logger = logging.getLogger(__name__)

SPECIES_SHARE = (0.35, 0.3, 0.2, 0.15)  # humpbacks and bottlenoses dominate, as in Happywhale
ZIPF_EXPONENT = 2.0  # ~60% of individuals get one photo (the real train set: 59%)
MAX_PHOTOS = 12
HEAD_PHOTOS = 8  # the most photographed individual gets at least this many, so every set has a head
BOX_JITTER = 0.02  # detector box edges wander by this share of the box size (standard deviation)
CSV_NAMES = ("train.csv", "boxes.csv", "test_solution.csv", "test_full.csv", "sample_submission.csv")


@dataclass(frozen=True)
class SyntheticSummary:
    out_dir: str
    train_csv: str
    boxes_csv: str
    test_solution_csv: str
    test_full_csv: str
    sample_submission_csv: str
    train_images_dir: str
    test_images_dir: str
    individuals: int
    train_individuals: int
    new_individuals: int
    train_images: int
    test_images: int
    test_images_of_new: int
    missing_boxes: int
    species: tuple[str, ...]


@dataclass(frozen=True)
class _Photo:
    image: str
    individual: int  # index into the individuals
    split: str  # "train" or "test"


def _hex_names(rng: np.random.Generator, count: int, nbytes: int) -> list[str]:
    """Unique random hex names the way Kaggle spells them (14 chars for images, 12 for individuals)."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        name = rng.bytes(nbytes).hex()
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _photo_counts(
    rng: np.random.Generator, individuals: int, min_photos: int = 1, singletons: bool = True
) -> np.ndarray:
    counts = np.minimum(rng.zipf(ZIPF_EXPONENT, individuals), MAX_PHOTOS)
    # By default singletons stay singletons, as in Happywhale; a curated catalogue (every animal seen
    # min_photos times) is what singletons=False gives.
    thinned = counts > 1 if singletons else np.ones(individuals, dtype=bool)
    counts[thinned] = np.maximum(counts[thinned], min_photos)
    counts[int(np.argmax(counts))] = max(int(counts.max()), HEAD_PHOTOS)
    return counts


def _plan(
    rng: np.random.Generator,
    individuals: int,
    test_fraction: float,
    new_fraction: float,
    min_photos: int = 1,
    singletons: bool = True,
) -> tuple[list[str], list[str], np.ndarray, list[_Photo]]:
    """Species, ids, which individuals are new, and every photo with its split."""
    species = [str(s) for s in rng.choice(SPECIES, size=individuals, p=SPECIES_SHARE)]
    ids = _hex_names(rng, individuals, 6)
    counts = _photo_counts(rng, individuals, min_photos, singletons)
    new_count = min(round(new_fraction * individuals), individuals - 1)
    is_new = np.zeros(individuals, dtype=bool)
    is_new[rng.choice(individuals, size=new_count, replace=False)] = True
    owners = np.repeat(np.arange(individuals), counts)
    first = np.concatenate([[True], owners[1:] != owners[:-1]])
    # Known individuals keep their first photo in train; the test draws from their other photos.
    known = ~is_new[owners]
    movable = np.flatnonzero(known & ~first)
    to_test = round(test_fraction * int(known.sum()))
    split = np.where(is_new[owners], "test", "train")
    split[rng.choice(movable, size=min(to_test, movable.size), replace=False)] = "test"
    names = _hex_names(rng, owners.size, 7)
    photos = [_Photo(f"{name}.jpg", int(o), str(s)) for name, o, s in zip(names, owners, split, strict=True)]
    return species, ids, is_new, photos


def _detector_box(rng: np.random.Generator, box: tuple[int, ...], size: tuple[int, int], miss: float) -> str:
    """What a detector would report for the true box: a little jitter, now and then nothing."""
    if rng.random() < miss:
        return ""
    x1, y1, x2, y2 = box
    jitter = rng.normal(0, BOX_JITTER, 4) * np.array([x2 - x1, y2 - y1, x2 - x1, y2 - y1])
    x1, y1, x2, y2 = (round(float(v)) for v in np.array(box) + jitter)
    width, height = size
    x1, x2 = min(max(x1, 0), width - 1), min(max(x2, 1), width)
    y1, y2 = min(max(y1, 0), height - 1), min(max(y2, 1), height)
    return f"{x1} {y1} {max(x2, x1 + 1)} {max(y2, y1 + 1)}"


def _jpeg(image: Image.Image, rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(80, 96)))
    return buffer.getvalue()


def _write_csv(path: str, frame: pd.DataFrame) -> None:
    files.write_text(path, frame.sort_values("image").to_csv(index=False, lineterminator="\n"))


def _prepare(out_dir: str, overwrite: bool) -> None:
    """Refuse to mix with an earlier set unless told to replace it; only our own files are removed."""
    ours = [files.join(out_dir, name) for name in CSV_NAMES]
    image_dirs = [files.join(out_dir, "train_images"), files.join(out_dir, "test_images")]
    found = [path for path in ours + image_dirs if files.exists(path)]
    if found and not overwrite:
        raise FileExistsError(f"{found[0]} already exists; pass overwrite=True (--overwrite) to replace it")
    for path in ours:  # train.csv first, so a half-rewritten set never looks finished
        files.remove(path)
    for path in image_dirs:
        files.rmtree(path)
        files.makedirs(path)


def _check_args(individuals: int, image_size: int, fractions: dict[str, float]) -> None:
    if individuals < 2:
        raise ValueError(f"individuals must be at least 2, got {individuals}")
    if image_size < 64:
        raise ValueError(f"image_size must be at least 64 pixels, got {image_size}")
    for name, value in fractions.items():
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")


def generate(
    out_dir: str,
    individuals: int = 60,
    seed: int = 0,
    image_size: int = 384,
    test_fraction: float = 0.2,
    new_fraction: float = 0.1,
    missing_box_fraction: float = 0.03,
    overwrite: bool = False,
    progress: bool = True,
    min_photos: int = 1,
    singletons: bool = True,
) -> SyntheticSummary:
    """Write a synthetic data set to out_dir (local or gs://); the same arguments give the same bytes.

    `individuals` counts every animal; `new_fraction` of them appear only in the test set. `test_fraction`
    of the other animals' photos move to the test set, never an animal's only train photo. train.csv is
    written last: while it is missing, the set is unfinished. `min_photos` > 1 thins the long tail: every
    animal photographed more than once gets at least that many photos (a catalogue a tiny model can learn
    in minutes); singletons stay unless `singletons` is False, when every animal gets at least
    `min_photos` (a curated photo-ID catalogue rather than Happywhale's long tail).
    """
    fractions = {
        "test_fraction": test_fraction,
        "new_fraction": new_fraction,
        "missing_box_fraction": missing_box_fraction,
    }
    _check_args(individuals, image_size, fractions)
    if min_photos < 1:
        raise ValueError(f"min_photos must be >= 1, got {min_photos}")
    if not singletons and min_photos < 2:
        raise ValueError("without singletons every animal needs at least 2 photos: set min_photos >= 2")
    _prepare(out_dir, overwrite)
    plan_rng = np.random.default_rng([seed, 1])
    species, ids, is_new, photos = _plan(
        plan_rng, individuals, test_fraction, new_fraction, min_photos, singletons
    )
    boxes = _render_all(out_dir, photos, species, seed, image_size, missing_box_fraction, progress)
    rows = pd.DataFrame(
        {
            "image": [p.image for p in photos],
            "species": [species[p.individual] for p in photos],
            "individual_id": [ids[p.individual] for p in photos],
            "test": [p.split == "test" for p in photos],
            "new": [bool(is_new[p.individual]) for p in photos],
            "box": boxes,
        }
    )
    summary = _write_tables(out_dir, rows)
    logger.info(
        "wrote %s: %d individuals (%d in train, %d new), %d train + %d test images (%d of new animals), "
        "%d missing boxes",
        out_dir,
        summary.individuals,
        summary.train_individuals,
        summary.new_individuals,
        summary.train_images,
        summary.test_images,
        summary.test_images_of_new,
        summary.missing_boxes,
    )
    return summary


def _render_all(out_dir, photos, species, seed, image_size, missing_box_fraction, progress) -> list[str]:
    """Render and write every photo; returns each photo's detector box string, in photo order."""
    template_width = round(image_size * 0.9)
    boxes = [""] * len(photos)
    by_individual: dict[int, list[int]] = {}
    for index, photo in enumerate(photos):
        by_individual.setdefault(photo.individual, []).append(index)
    with tqdm(total=len(photos), desc="rendering", unit="photo", disable=not progress) as bar:
        for individual, indices in by_individual.items():
            # Own random streams per individual and per photo: one photo's draws never shift another's.
            identity = make_identity(species[individual], np.random.default_rng([seed, 2, individual]))
            template = draw_template(identity, template_width)
            for index in indices:
                photo = photos[index]
                rng = np.random.default_rng([seed, 3, index])
                image, box = render_photo(identity, template, rng, image_size)
                folder = "train_images" if photo.split == "train" else "test_images"
                files.write_bytes(files.join(out_dir, folder, photo.image), _jpeg(image, rng))
                boxes[index] = _detector_box(rng, box, image.size, missing_box_fraction)
                bar.update()
    return boxes


def _write_tables(out_dir: str, rows: pd.DataFrame) -> SyntheticSummary:
    """All CSVs from one row per photo (image, species, individual_id, test, new, box)."""
    train, test = rows[~rows.test], rows[rows.test]
    paths = {name: files.join(out_dir, name) for name in CSV_NAMES}
    solution = test.assign(individual_id=np.where(test.new, NEW_INDIVIDUAL, test.individual_id))
    _write_csv(paths["boxes.csv"], rows[["image", "box"]])
    _write_csv(paths["test_solution.csv"], solution[["image", "individual_id"]])
    _write_csv(paths["test_full.csv"], test[["image", "species", "individual_id"]])
    _write_csv(paths["sample_submission.csv"], test[["image"]].assign(predictions=NEW_INDIVIDUAL))
    _write_csv(paths["train.csv"], train[["image", "species", "individual_id"]])
    return SyntheticSummary(
        out_dir=out_dir,
        train_csv=paths["train.csv"],
        boxes_csv=paths["boxes.csv"],
        test_solution_csv=paths["test_solution.csv"],
        test_full_csv=paths["test_full.csv"],
        sample_submission_csv=paths["sample_submission.csv"],
        train_images_dir=files.join(out_dir, "train_images"),
        test_images_dir=files.join(out_dir, "test_images"),
        individuals=rows.individual_id.nunique(),
        train_individuals=train.individual_id.nunique(),
        new_individuals=rows.individual_id[rows.new].nunique(),
        train_images=len(train),
        test_images=len(test),
        test_images_of_new=int(test.new.sum()),
        missing_boxes=int((rows.box == "").sum()),
        species=tuple(sorted(set(rows.species))),
    )
