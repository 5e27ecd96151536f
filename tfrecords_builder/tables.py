"""build-tfrecords input tables: read train/test CSVs, clean species, drop bad rows as rejects, label maps."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pandas as pd

from tfrecords_builder.errors import BuildInputError, Reject
from tfwhale.contracts.individual_id import control_problem, id_problem
from tfwhale.core import files
from tfwhale.imaging import box_table
from tfwhale.imaging.crop_box import Box

logger = logging.getLogger(__name__)

SPECIES_FIXES = {
    "bottlenose_dolpin": "bottlenose_dolphin",
    "kiler_whale": "killer_whale",
    "globis": "short_finned_pilot_whale",
    "pilot_whale": "short_finned_pilot_whale",
}
TRAIN_REQUIRED = ("image", "species", "individual_id")
TRAIN_COLUMNS = ("image", "path", "species", "individual_id", "row", "box_text")
TEST_COLUMNS = ("image", "path", "row", "box_text")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Names that would read outside the images folder: absolute, '..' parts, Windows separators or drives, URLs.
_ESCAPES = {
    "absolute path": r"^/",
    "'..' path component": r"(?:^|/)\.\.(?:/|$)",
    "backslash in name": r"\\",
    "drive letter": r"^[A-Za-z]:",
    "URL scheme": r"://",
}


@contextmanager
def tables_are_fatal() -> Iterator[None]:
    """A table the shared reader (imaging.box_table) refuses stops the build, with the reader's message."""
    try:
        yield
    except box_table.TableError as err:
        raise BuildInputError(str(err)) from None


def read_csv_table(csv_path: str, required: Sequence[str]) -> pd.DataFrame:
    """box_table.read_csv_table (cells as stripped strings plus each row's CSV line); BuildInputError when
    the file is missing, has no data rows, or lacks a required column."""
    with tables_are_fatal():
        return box_table.read_csv_table(csv_path, required)


def box_column_text(table: pd.DataFrame, source: str) -> pd.Series:
    """Each row's chosen box as text from the table's own box columns (--min-conf is for --boxes only)."""
    with tables_are_fatal():
        return box_table.box_column_text(table, source)


def load_train_table(
    csv_path: str, images_dir: str, check_files: bool = True
) -> tuple[pd.DataFrame, list[Reject]]:
    """The usable training rows (columns TRAIN_COLUMNS) and a Reject for every row dropped."""
    table = read_csv_table(csv_path, TRAIN_REQUIRED)
    table["box_text"] = box_column_text(table, csv_path)
    table["species"] = _fix_species(table["species"])
    table, rejects = _drop_bad_rows(table, ("image", "individual_id", "species"), "individual_id")
    _check_labels(csv_path, table)
    if check_files:
        table, missing = _drop_missing_files(table, images_dir)
        rejects += missing
    _require_rows(csv_path, table, rejects)
    table["path"] = [files.join(images_dir, image) for image in table["image"].tolist()]
    logger.info("%s: %d training images, %d rejected", csv_path, len(table), len(rejects))
    return table[list(TRAIN_COLUMNS)].reset_index(drop=True), rejects


def _check_labels(csv_path: str, table: pd.DataFrame) -> None:
    """Refuse the build when an individual_id breaks the id rule (see individual_id.id_problem) or a
    species holds control characters: both end up in CSVs, URLs and submissions."""
    for field, check, fix in (
        ("individual_id", id_problem, "rename these individuals (e.g. replace spaces with '_')"),
        ("species", control_problem, "remove the control characters (line breaks, tabs)"),
    ):
        bad = [
            (row, value, problem)
            for row, value in zip(table["row"], table[field], strict=True)
            if (problem := check(value))
        ]
        if bad:
            row, value, problem = bad[0]
            more = f" ({len(bad)} rows in all, e.g. rows {', '.join(str(r) for r, _, _ in bad[:5])})"
            raise BuildInputError(
                f"{csv_path}: row {row}, field '{field}': {value!r} {problem}"
                f"{more if len(bad) > 1 else ''}; {fix} and build again"
            )


def load_test_table(
    images_dir: str, csv_path: str | None = None, check_files: bool = True
) -> tuple[pd.DataFrame, list[Reject]]:
    """Test images (columns TEST_COLUMNS) from csv_path's `image` column, else every image in images_dir."""
    if csv_path is None:
        table = _list_images(images_dir)
        source = images_dir
    else:
        table = read_csv_table(csv_path, ("image",))
        table["box_text"] = box_column_text(table, csv_path)
        source = csv_path
    table, rejects = _drop_bad_rows(table, ("image",), None)
    if check_files and csv_path is not None:
        table, missing = _drop_missing_files(table, images_dir)
        rejects += missing
    _require_rows(source, table, rejects)
    table["path"] = [files.join(images_dir, image) for image in table["image"].tolist()]
    logger.info("%s: %d test images, %d rejected", source, len(table), len(rejects))
    return table[list(TEST_COLUMNS)].reset_index(drop=True), rejects


def _list_images(images_dir: str) -> pd.DataFrame:
    if not files.isdir(images_dir):
        raise BuildInputError(f"{images_dir}: images folder not found")
    names = [name for name in files.listdir(images_dir) if name.lower().endswith(IMAGE_EXTENSIONS)]
    if not names:
        raise BuildInputError(f"{images_dir}: no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return pd.DataFrame({"image": names, "row": [None] * len(names), "box_text": ""})


def _fix_species(species: pd.Series) -> pd.Series:
    fixed = species.replace(SPECIES_FIXES)
    if changed := int((fixed != species).sum()):
        logger.info("species typos fixed in %d rows (%s)", changed, ", ".join(sorted(SPECIES_FIXES)))
    return fixed


def _drop_bad_rows(
    table: pd.DataFrame, fields: Sequence[str], label: str | None
) -> tuple[pd.DataFrame, list[Reject]]:
    """Empty fields, unsafe image names, then duplicates; each dropped row becomes a Reject."""
    rejects: list[Reject] = []
    for check in (_empty_fields, _unsafe_names):
        bad = check(table, fields)
        rejects += [_reject(table, index, field, reason) for index, (field, reason) in bad.items()]
        table = table.drop(index=list(bad))
    table, duplicates = _drop_duplicates(table, label)
    return table, rejects + duplicates


def _reject(table: pd.DataFrame, index: int, field: str, reason: str) -> Reject:
    row = table.at[index, "row"]
    return Reject(table.at[index, "image"], None if pd.isna(row) else int(row), field, reason)


def _empty_fields(table: pd.DataFrame, fields: Sequence[str]) -> dict[int, tuple[str, str]]:
    bad: dict[int, tuple[str, str]] = {}
    for field in fields:
        for index in table.index[table[field] == ""]:
            bad.setdefault(index, (field, f"empty {field}"))
    return bad


def _unsafe_names(table: pd.DataFrame, fields: Sequence[str]) -> dict[int, tuple[str, str]]:
    bad: dict[int, tuple[str, str]] = {}
    for what, pattern in _ESCAPES.items():
        for index in table.index[table["image"].str.contains(pattern, regex=True)]:
            bad.setdefault(index, ("image", f"image name escapes the images folder ({what}); refused"))
    return bad


def _drop_duplicates(table: pd.DataFrame, label: str | None) -> tuple[pd.DataFrame, list[Reject]]:
    """Keep the first row of a repeated image; an image given two different labels is dropped entirely."""
    repeated = table[table["image"].duplicated(keep=False)]
    rejects: list[Reject] = []
    dropped: list[int] = []
    for _, group in repeated.groupby("image", sort=False):
        if label and group[label].nunique() > 1:
            pairs = zip(group["row"], group[label], strict=True)
            given = ", ".join(f"row {row}: '{value}'" for row, value in pairs)
            reason = f"conflicting {label} for the same image ({given}); all copies refused"
            rejects += [_reject(table, index, label, reason) for index in group.index]
            dropped += list(group.index)
        else:
            reason = f"duplicate of row {group['row'].iloc[0]}"
            rejects += [_reject(table, index, "image", reason) for index in group.index[1:]]
            dropped += list(group.index[1:])
    return table.drop(index=dropped), rejects


def _drop_missing_files(table: pd.DataFrame, images_dir: str) -> tuple[pd.DataFrame, list[Reject]]:
    if not files.isdir(images_dir):
        raise BuildInputError(f"{images_dir}: images folder not found")
    # One listing instead of one exists() call per image: 50k stat calls take minutes on gs://.
    listed = set(files.listdir(images_dir))
    found = [_is_listed(name, listed, images_dir) for name in table["image"].tolist()]
    present = pd.Series(found, index=table.index, dtype=bool)
    reason = f"file not found in {images_dir}"
    rejects = [_reject(table, index, "image", reason) for index in table.index[~present]]
    return table[present], rejects


def _is_listed(name: str, listed: set[str], images_dir: str) -> bool:
    # Names with subfolders are not in the top-level listing; those few are asked for one by one.
    return name in listed if "/" not in name else files.exists(files.join(images_dir, name))


def _require_rows(source: str, table: pd.DataFrame, rejects: list[Reject]) -> None:
    if not table.empty:
        return
    examples = "; ".join(f"row {r.row}, field '{r.field}': {r.reason}" for r in rejects[:3])
    raise BuildInputError(f"{source}: no usable rows, all {len(rejects)} rejected (e.g. {examples})")


def label_maps(train: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Sorted individual ids and species; a name's index is its integer label."""
    return sorted(train["individual_id"].unique()), sorted(train["species"].unique())


def photo_counts(train: pd.DataFrame) -> dict[str, int]:
    """Photos per individual id, keyed in sorted id order."""
    counts = train["individual_id"].value_counts()
    return {individual: int(counts[individual]) for individual in sorted(counts.index)}


def read_boxes_csv(csv_path: str, min_conf: float = 0.0) -> dict[str, Box | None]:
    """image -> box from a detector CSV in any accepted format (box_table.read_box_table, strict)."""
    with tables_are_fatal():
        return box_table.read_box_table(csv_path, min_conf, strict=True)
