"""Bulk import (serve): photos that already carry ids go into the catalogue in one step, with a report.

Two layouts: a folder of `ID/photo.jpg` (the folder name is the individual id), or a CSV with columns
image, individual_id and optional species and metadata columns (EXPORT_COLUMNS: an export's train.csv
imports as it is). Each photo goes the way an upload goes (the engine's query path embeds it, its EXIF
fills the metadata the CSV leaves empty), then Store.decide assigns it: confirm for an id the catalogue
has, register for a new one. So the next query finds it. Each photo gets one line in the report:
imported, duplicate, unreadable or refused, with the reason; one bad photo never stops the rest.
Where the CSV gives no side, a file name ending `_left`/`_right` (or `_leftphoto`/`_rightphoto`, as
nyala-dev names the flank) gives it.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from tfwhale.contracts.individual_id import check_id
from tfwhale.core.csv_text import csv_text, spreadsheet_safe
from tfwhale.serve import metadata_store
from tfwhale.serve.blobs import sha256_hex
from tfwhale.serve.metadata import EXPORT_COLUMNS, MetaError, PhotoMeta, check_meta

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
REPORT_COLUMNS = ("file", "status", "individual_id", "photo_sha256", "reason")
NOTE = "bulk import"
_NAMED_SIDE = re.compile(r"[_\-. ](left|right)(?:photo)?$", re.IGNORECASE)  # 'nyala_11_leftphoto'


class ImportInputError(ValueError):
    """An import that cannot start (no such folder, a CSV without its required columns); nothing was done."""


@dataclass(frozen=True)
class ImportItem:
    file: str  # as the report names it: the path under the folder, or the CSV's image
    individual: str
    species: str
    meta: PhotoMeta
    load: Callable[[], bytes]  # the photo's bytes; OSError when it cannot be read


@dataclass(frozen=True)
class Outcome:
    file: str
    status: str  # imported, duplicate, unreadable or refused
    individual: str = ""
    photo: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Plan:
    items: list[ImportItem]
    refused: list[Outcome]  # rows refused before any photo was read (bad metadata, no such file)


def plan_folder(folder: str | Path, csv_path: str | Path | None = None) -> Plan:
    """The photos of a folder: by the CSV when given (images relative to the folder, or to its
    train_images/ as an export has them), else by the `ID/photo` layout."""
    root = Path(folder)
    if not root.is_dir():
        raise ImportInputError(f"{folder}: not a folder")
    if csv_path is None:
        return _plan_id_folders(root)
    path = Path(csv_path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ImportInputError(f"{csv_path}: not readable as UTF-8 text ({err})") from None

    def find(image: str) -> Callable[[], bytes] | None:
        for base in (root, root / "train_images"):
            candidate = (base / image).resolve()
            if candidate.is_file() and candidate.is_relative_to(root.resolve()):
                return candidate.read_bytes
        return None

    return plan_csv(text, str(csv_path), find)


def _plan_id_folders(root: Path) -> Plan:
    items, refused = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        relative = path.relative_to(root).as_posix()
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue  # notes, CSVs, sidecar files: not photos
        if "/" not in relative:
            refused.append(Outcome(relative, "refused", reason="not in an ID folder (ID/photo.jpg)"))
            continue
        individual = relative.split("/", 1)[0]
        items.append(
            ImportItem(relative, individual, "", _with_named_side(PhotoMeta(), relative), path.read_bytes)
        )
    if not items and not refused:
        raise ImportInputError(f"{root}: no photos ({', '.join(IMAGE_SUFFIXES)}) in ID folders")
    return Plan(items, refused)


def plan_uploads(
    files: dict[str, bytes], csv_text_: str | None, where: str = "import.csv", only_sent: bool = False
) -> Plan:
    """Photos sent through the app: by the CSV (its image matches a file's name or its path as sent),
    else each file's path as sent must be ID/photo (a folder chosen in the browser). `only_sent`: CSV
    rows whose photo was not sent are left out (the app sends one photo per request)."""
    if csv_text_ is not None:
        by_name = {}
        for name, data in files.items():
            by_name.setdefault(name, data)
            by_name.setdefault(name.rsplit("/", 1)[-1], data)

        def find(image: str) -> Callable[[], bytes] | None:
            return (lambda: by_name[image]) if image in by_name else None

        plan = plan_csv(csv_text_, where, find, only_sent)
        named = {item.file for item in plan.items} | {o.file for o in plan.refused}
        for name in files:
            if name not in named and name.rsplit("/", 1)[-1] not in named:
                plan.refused.append(Outcome(name, "refused", reason=f"{where}: no row names this photo"))
        return plan
    items, refused = [], []
    for name, data in files.items():
        if "/" not in name:
            refused.append(Outcome(name, "refused", reason="no CSV and not in an ID folder (ID/photo.jpg)"))
            continue
        individual = name.rsplit("/", 2)[-2]  # the folder the photo is in
        meta = _with_named_side(PhotoMeta(), name)
        items.append(ImportItem(name, individual, "", meta, lambda data=data: data))
    return Plan(items, refused)


def plan_csv(
    text: str, where: str, find: Callable[[str], Callable[[], bytes] | None], skip_missing: bool = False
) -> Plan:
    """Rows of an import CSV; `find` gives a row's photo loader, or None when there is no such photo
    (reported as unreadable, or left out with skip_missing)."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    columns = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in ("image", "individual_id") if name not in columns]
    if missing:
        raise ImportInputError(f"{where}: missing column(s) {missing}; found {columns}")
    reader.fieldnames = columns
    ignored = sorted(set(columns) - {"image", "individual_id", "species", *EXPORT_COLUMNS})
    if ignored:
        logger.info("%s: columns %s are not catalogue fields; ignored", where, ignored)
    items, refused = [], []
    for line, row in enumerate(reader, start=2):
        image = (row.get("image") or "").strip()
        individual = (row.get("individual_id") or "").strip()
        if not image and not individual:
            continue  # a blank line
        load = find(image) if image else None
        if load is None and skip_missing:
            continue
        if load is None:
            refused.append(
                Outcome(image, "unreadable", individual, reason=f"{where}: row {line}: no such file")
            )
            continue
        try:
            meta = check_meta({name: row.get(name) or "" for name in EXPORT_COLUMNS if name in columns})
        except MetaError as err:
            refused.append(Outcome(image, "refused", individual, reason=f"{where}: row {line}: {err}"))
            continue
        if not (row.get("side") or "").strip():  # a side the CSV gives, 'unknown' included, stays
            meta = _with_named_side(meta, image)
        items.append(ImportItem(image, individual, (row.get("species") or "").strip(), meta, load))
    return Plan(items, refused)


def side_from_name(file: str) -> str:
    """'left' or 'right' when the file's name (suffix aside) ends so, e.g. 'x_leftphoto.jpg'; else ''."""
    stem = Path(file.rsplit("/", 1)[-1]).stem
    found = _NAMED_SIDE.search(stem)
    return found.group(1).lower() if found else ""


def _with_named_side(meta: PhotoMeta, file: str) -> PhotoMeta:
    """The side the file's name gives, only where the metadata has none (a CSV's side always wins)."""
    named = side_from_name(file)
    return replace(meta, side=named) if named and meta.side == "unknown" else meta


def run_import(catalogue, plan: Plan, reviewer: str, progress: bool = False) -> list[Outcome]:
    """Import every planned photo; the report, refused rows first, then the photos in plan order."""
    outcomes = list(plan.refused)
    for item in tqdm(plan.items, desc="import", unit="photo", disable=not progress):
        try:
            outcomes.append(import_one(catalogue, item, reviewer))
        except Exception as err:  # one bad photo never sinks the rest; it is reported, not raised
            logger.exception("%s: import failed", item.file)
            outcomes.append(
                Outcome(item.file, "refused", item.individual, reason=f"{type(err).__name__}: {err}")
            )
    return outcomes


def import_one(catalogue, item: ImportItem, reviewer: str) -> Outcome:
    from tfwhale.serve.catalogue import UploadError
    from tfwhale.serve.store import ConflictError

    def outcome(status: str, photo: str = "", reason: str = "") -> Outcome:
        return Outcome(item.file, status, item.individual, photo, reason)

    known = catalogue.store.individual(item.individual) is not None
    if not known:
        try:
            check_id(item.individual)
        except ValueError as err:
            return outcome("refused", reason=f"individual_id: {err}")
    try:
        data = item.load()
    except OSError as err:
        return outcome("unreadable", reason=f"cannot read the file ({err.strerror or err})")
    sha = sha256_hex(data)
    existing = catalogue.store.photo(sha)
    if existing is not None and existing.individual_id is not None:
        return outcome("duplicate", sha, f"the same photo is in the catalogue as {existing.individual_id}")
    name = item.file.rsplit("/", 1)[-1]
    try:
        _, result = catalogue.upload(data, name, None, reviewer, item.meta, how="import")
    except UploadError as err:
        return outcome("unreadable", reason=str(err))
    if existing is not None and not item.meta.is_empty():  # uploaded before, undecided: the CSV's values
        meta = item.meta.filled_from(metadata_store.metadata(catalogue.store, sha))
        catalogue.set_metadata(sha, meta, reviewer, how="import")
    action = "confirm" if known else "register"
    try:
        catalogue.decide(sha, action, item.individual, NOTE, reviewer, result.scores(), item.species)
    except (ConflictError, ValueError) as err:
        return outcome("refused", sha, str(err))
    return outcome("imported", sha, "new individual" if action == "register" else "")


def counts(outcomes: Iterable[Outcome]) -> dict[str, int]:
    found = {"imported": 0, "duplicate": 0, "unreadable": 0, "refused": 0}
    for outcome in outcomes:
        found[outcome.status] += 1
    return found


def report_csv(outcomes: Iterable[Outcome]) -> str:
    rows = [[spreadsheet_safe(getattr(o, f)) for f in ("file", "status", "individual", "photo", "reason")]
            for o in outcomes]  # fmt: skip
    return csv_text([REPORT_COLUMNS, *rows])
