"""Stage 3's files: the sample submission's order, the solution, submission.csv, the reusable embeddings."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tfwhale.contracts.gallery_arrays import FoldCentres, GalleryArrays
from tfwhale.contracts.records import label_problem
from tfwhale.core import files
from tfwhale.core.labels import NEW_INDIVIDUAL

if TYPE_CHECKING:
    from tfwhale.inference.gallery import PredictEmbeddings
    from tfwhale.retrieval.ranking import PreparedGallery

logger = logging.getLogger("tfwhale.predict")

NEW = NEW_INDIVIDUAL
SUBMISSION_NAME = "submission.csv"


class PredictError(ValueError):
    """Bad predict input that is not about a run or the records (sample submission, solution, flags)."""


def submission_order(test_names: Sequence[str], sample_path: str | None) -> list[str]:
    """The sample submission's image order (checked: every test image exactly once), else sorted names."""
    if sample_path is None:
        return sorted(test_names)
    sample = read_csv(sample_path, ["image"])
    images = sample["image"].tolist()
    duplicated = sorted(set(sample["image"][sample["image"].duplicated()]))
    if duplicated:
        raise PredictError(f"{sample_path}: images listed more than once, e.g. {duplicated[:3]}")
    missing, extra = sorted(set(images) - set(test_names)), sorted(set(test_names) - set(images))
    if missing or extra:
        raise PredictError(
            f"{sample_path}: {len(missing)} image(s) not in the test records (e.g. {missing[:3]}), "
            f"{len(extra)} test record(s) not in it (e.g. {extra[:3]}); are the records from another build?"
        )
    return images


def read_csv(path: str, columns: Sequence[str]) -> pd.DataFrame:
    if not files.exists(path):
        raise PredictError(f"{path}: file not found")
    table = pd.read_csv(io.StringIO(files.read_text(path)), dtype=str, keep_default_na=False)
    absent = [c for c in columns if c not in table.columns]
    if absent:
        raise PredictError(f"{path}: missing column(s) {absent}; found {list(table.columns)}")
    return table


def read_solution(path: str | None, test_names: Sequence[str]) -> dict[str, str] | None:
    if path is None:
        return None
    table = read_csv(path, ["image", "individual_id"])
    unknown = sorted(set(table["image"]) - set(test_names))
    if unknown:
        raise PredictError(f"{path}: {len(unknown)} image(s) not in the test records, e.g. {unknown[:3]}")
    return dict(zip(table["image"], table["individual_id"], strict=True))


def submission_text(names: Sequence[str], answers: dict[str, list[str]]) -> str:
    """image,predictions rows, CSV-quoted where an image name needs it; refuses a label that would not
    split back out of the space-separated predictions field, and checks every row reads back."""
    for name in names:
        for label in answers[name]:
            if (problem := label_problem(label)) and label != NEW:
                raise PredictError(f"label {label!r} (answer for {name}) {problem}; rebuild the records")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "predictions"])
    writer.writerows([name, " ".join(answers[name])] for name in names)
    text = buffer.getvalue()
    check_submission_text(text, "submission.csv", {name: answers[name] for name in names})
    return text


def check_submission_text(
    text: str, where: str, expected: dict[str, list[str]] | None = None
) -> dict[str, list[str]]:
    """Read a submission back: 2 fields a row, labels split by single spaces, each label allowed
    (and equal to `expected` when given). Returns image -> labels; PredictError naming the line."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0] != ["image", "predictions"]:
        raise PredictError(f"{where}: line 1 must be 'image,predictions', got {rows[:1]}")
    read: dict[str, list[str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise PredictError(f"{where}: line {line} has {len(row)} fields, not 2: {row}")
        labels = row[1].split(" ")
        bad = [label for label in labels if label != NEW and label_problem(label)]
        if bad or "" in labels or len(labels) > 5:
            raise PredictError(f"{where}: line {line}: predictions {row[1]!r} do not split into labels")
        if expected is not None and labels != expected.get(row[0]):
            raise PredictError(f"{where}: line {line}: {row[0]} reads back as {labels}")
        read[row[0]] = labels
    return read


def write_submission(path: str, names: Sequence[str], answers: dict[str, list[str]]) -> None:
    short = [n for n in names if len(answers[n]) < 5]
    if short:
        logger.warning(
            "%d queries have fewer than 5 labels (the gallery has too few individuals)", len(short)
        )
    files.write_text(path, submission_text(names, answers))


def gallery_arrays(
    emb: PredictEmbeddings, gallery: PreparedGallery, class_names: Sequence[str]
) -> GalleryArrays:
    """The combined embeddings (and the post-processed gallery, when it differs, and the class centres the
    blend needs) that identify and the catalogue app reuse."""
    index = emb.index
    train = emb.combined("train")
    searched = None
    if gallery.embeddings.shape != train.shape or not np.array_equal(gallery.embeddings, train):
        searched = gallery.embeddings  # whitened and/or database-augmented
    whitening = None
    if gallery.whitening is not None:
        whitening = (gallery.whitening.mean, gallery.whitening.projection, gallery.whitening.eigenvalues)
    centres = tuple(
        FoldCentres(r, f.model.name, f.centres, f.subcenters)
        for r, run in enumerate(emb.runs)
        for f in run.folds
        if f.centres is not None
    )
    return GalleryArrays(
        train=train,
        train_names=list(index.train_names),
        train_ids=list(index.train_ids),
        train_species=list(index.train_species),
        train_folds=index.train_folds,
        test=emb.combined("test"),
        test_names=list(index.test_names),
        class_names=list(class_names),
        searched=searched,
        whitening=whitening,
        centres=centres,
    )
