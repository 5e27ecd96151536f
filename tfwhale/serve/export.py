"""The catalogue's exports (serve): the Kaggle layout build-tfrecords takes, and the decisions CSV.

DIR/exports/<time>/train.csv (image, species, individual_id, then the metadata columns EXPORT_COLUMNS),
train_images/ with every photo under its original file name (a short hash added only where names clash),
boxes.csv when photos have boxes, and README.txt saying what is in it: the command build_command prints
(the gallery's own size and crop recipe) builds records from it as printed. Uploads are exported as
uploaded; gallery photos as their originals where the records' manifest names a readable one (with the
box the build used), else as the crops the records hold.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from tfwhale.contracts.individual_id import control_problem, id_problem
from tfwhale.core.csv_text import csv_text, spreadsheet_safe
from tfwhale.serve import metadata_store
from tfwhale.serve.blobs import sha256_hex
from tfwhale.serve.metadata import EXPORT_COLUMNS, PhotoMeta
from tfwhale.serve.originals import RecordsOriginals
from tfwhale.serve.store import Store

UNKNOWN_SPECIES = "unknown"  # build-tfrecords drops rows without a species
BOXES_NAME = "boxes.csv"
README_NAME = "README.txt"
RECORDS_PLACEHOLDER = "RECORDS_DIR"
logger = logging.getLogger(__name__)
TRAIN_COLUMNS = ("image", "species", "individual_id", *EXPORT_COLUMNS)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_UNSAFE = re.compile(r"[\\/:\x00-\x1f\x7f]")  # separators, drive colons, control characters


@dataclass(frozen=True)
class Export:
    folder: Path
    has_boxes: bool
    warnings: list[str]  # rows the builder will refuse (ids or species from before today's rules)
    notes: list[str]  # what the export holds: originals, crops only (also in its README.txt)


def export_catalogue(catalogue, out: str | Path | None = None) -> Path:
    """Write the export into a fresh folder (a temporary one renamed at the end); returns it."""
    return export_with_report(catalogue, out).folder


def export_with_report(catalogue, out: str | Path | None = None) -> Export:
    """The export, and whether it has boxes.csv, and what the builder will refuse in it."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    final = Path(out) if out is not None else catalogue.dir / "exports" / stamp
    temp = final.with_name(f".tmp-{final.name}")
    (temp / "train_images").mkdir(parents=True, exist_ok=False)
    rows = catalogue.store.conn.execute(
        "SELECT p.sha256, p.source, p.name, p.box, p.individual_id, i.species FROM photos p "
        "JOIN individuals i ON i.id = p.individual_id ORDER BY p.individual_id, p.added_at, p.sha256"
    ).fetchall()
    records = RecordsOriginals.of_records(catalogue.engine.manifest.records_root)
    metadata = metadata_store.all_metadata(catalogue.store)
    train, boxes, names = [list(TRAIN_COLUMNS)], [["image", "box"]], set()
    counts = {"upload": 0, "original": 0, "crop": 0, "twin": 0}
    uploads = {row[0] for row in rows if row[1] not in ("gallery", "test")}
    for sha, source, name, box, individual, species in rows:
        data, box, kind = _photo_bytes(catalogue, records, sha, source, name, box)
        if data is None and not catalogue.blobs.has(sha):
            continue  # a gallery photo whose records were not readable: nothing to export
        if kind == "original" and sha256_hex(data) in uploads:
            counts["twin"] += 1  # its original was uploaded or imported too: exported once, as that
            continue
        image = export_name(name, sha, names)
        _write_image(temp / "train_images" / image, data, catalogue.blobs.path(sha))
        counts[kind] += 1
        train.append([image, species or UNKNOWN_SPECIES, individual, *metadata.get(sha, PhotoMeta()).cells()])
        if box:
            boxes.append([image, box])
    (temp / "train.csv").write_text(csv_text(train), encoding="utf-8")
    if len(boxes) > 1:  # the builder refuses a boxes.csv without rows
        (temp / BOXES_NAME).write_text(csv_text(boxes), encoding="utf-8")
    (temp / "decisions.csv").write_text(decisions_csv(catalogue.store), encoding="utf-8")
    notes = _notes(counts, records)
    (temp / README_NAME).write_text(readme_text(notes), encoding="utf-8")
    os.replace(temp, final)
    logger.info("export %s: %s", final, "; ".join(notes))
    return Export(final, len(boxes) > 1, _refused(train[1:]), notes)


def _photo_bytes(catalogue, records: RecordsOriginals, sha: str, source: str, name: str, box: str):
    """(original bytes or None for the stored blob, box text, kind) of one exported photo."""
    if source not in ("gallery", "test"):
        return None, box, "upload"  # the blob is the upload as received
    original = records.original(source, name)
    if original is None:
        return None, box, "crop"
    return original, records.boxes.get(name, ""), "original"


def _write_image(target: Path, data: bytes | None, blob: Path) -> None:
    if data is not None:
        target.write_bytes(data)
        return
    try:
        os.link(blob, target)  # same disk: no copy needed
    except OSError:
        shutil.copyfile(blob, target)


def export_name(name: str, sha: str, taken: set[str]) -> str:
    """A readable file name: the photo's original name (its last path part, unsafe characters replaced),
    with the first 8 characters of its hash added before the suffix only when the name is taken."""
    base = _UNSAFE.sub("_", PurePosixPath(name.replace("\\", "/")).name).strip().lstrip(".")
    stem, suffix = os.path.splitext(base)
    if suffix.lower() not in IMAGE_SUFFIXES:
        stem, suffix = base, ".jpg"
    stem = stem[:150] or sha[:12]
    image = f"{stem}{suffix}"
    if image.lower() in taken:
        image = f"{stem}-{sha[:8]}{suffix}"
    taken.add(image.lower())  # case-insensitive: the export may be copied to a Mac or Windows disk
    return image


def _notes(counts: dict[str, int], records: RecordsOriginals) -> list[str]:
    notes = [f"{counts['upload']} photo(s) added in the catalogue, exported as uploaded (full resolution)"]
    if counts["original"]:
        notes.append(f"{counts['original']} gallery photo(s) exported as their original files from "
                     f"{records.folder('gallery') or records.folder('test')}")  # fmt: skip
    if counts["twin"]:
        notes.append(f"{counts['twin']} gallery photo(s) left out: the same file was added in the catalogue")
    if counts["crop"]:
        notes.append(
            f"{counts['crop']} gallery photo(s) exported as the records' crops only: their originals "
            "were not readable (the records' manifest names no image folder, or the files moved)"
        )
    return notes


def readme_text(notes: list[str]) -> str:
    columns = {
        "image": "the photo's file in train_images/ (its original name; '-' and 8 hash characters added "
        "where two photos share a name)",
        "species": "the individual's species ('unknown' where none was given)",
        "individual_id": "the individual the photo is assigned to",
        "date": "when the photo was taken: YYYY-MM-DDTHH:MM:SS or YYYY-MM-DD (EXIF DateTimeOriginal, "
        "or typed)",
        "latitude": "decimal degrees, north positive (EXIF GPS, or typed); empty when unknown",
        "longitude": "decimal degrees, east positive; empty when unknown",
        "place": "the place as typed",
        "side": "which side of the animal the photo shows: unknown, left, right, front or back",
        "photographer": "who took the photo",
        "notes": "free notes on the photo",
    }
    lines = ["tfwhale catalogue export", "", "Contents:", *(f"- {note}" for note in notes), ""]
    lines.append("train.csv columns (build-tfrecords reads image, species, individual_id, ignores the rest):")
    lines += [f"- {name}: {columns[name]}" for name in TRAIN_COLUMNS]
    return "\n".join(lines) + "\n"


def _refused(rows: list[list[str]]) -> list[str]:
    """One line per id or species build-tfrecords will refuse (kept from before today's rules)."""
    found = {}
    for _image, species, individual, *_metadata in rows:
        if problem := id_problem(individual):
            found.setdefault(f"id {individual!r}", problem)
        if problem := control_problem(species):
            found.setdefault(f"species {species!r}", problem)
    return [f"train.csv: {what} {why}: edit it before building" for what, why in found.items()]


def build_command(folder: Path, settings=None, has_boxes: bool | None = None) -> str:
    """The build-tfrecords command that turns an export into records, runnable as printed: the
    gallery's image size and crop recipe (`settings`, identify's ImageSettings), no test split, and
    --boxes only when the export has boxes.csv. Paths are absolute: it runs from any folder."""
    folder = Path(folder).absolute()
    argv = ["build-tfrecords", "--data", str(folder), "--no-test", "--out", RECORDS_PLACEHOLDER]
    if has_boxes if has_boxes is not None else (Path(folder) / BOXES_NAME).exists():
        argv += ["--boxes", str(Path(folder) / BOXES_NAME)]
    if settings is not None:
        argv += ["--size", str(settings.size), "--resize", settings.resize_mode]
        argv += ["--enlarge", repr(float(settings.enlarge)), "--quality", str(settings.quality)]
    return shlex.join(argv)


def decisions_csv(store: Store) -> str:
    """Every decision ever recorded, oldest first, undone ones too: an undo names the decision it took
    back (`reverts`), a reassign, split or merge the id it moved from (`from_individual`); the photo's
    file name and the individual it is in now make each row readable on its own."""
    columns = ["id", "decided_at", "reviewer", "action", "individual_id", "photo_sha256", "note", "scores"]
    extra = ["from_individual", "reverts", "photo_name", "photo_now_in"]
    photos = {sha: (name, now_in or "") for sha, name, now_in in store.conn.execute(
        "SELECT sha256, name, individual_id FROM photos WHERE sha256 IN (SELECT photo_sha256 FROM decisions)"
    )}  # fmt: skip
    rows = []
    for row in store.decisions():
        cells = [row[c] for c in columns[:-1]] + [scores_text(row["scores"])]
        name, now_in = photos.get(row["photo_sha256"], ("", ""))
        cells += [row["from_individual"], row["reverts"] if row["reverts"] is not None else "", name, now_in]
        rows.append([spreadsheet_safe("" if cell is None else cell) for cell in cells])
    return csv_text([columns + extra, *rows])


def scores_text(scores: str) -> str:
    """The candidates a reviewer was shown, as 'label similarity; ...' (stored as JSON)."""
    try:
        shown = json.loads(scores)
    except (TypeError, ValueError):
        return str(scores)
    return "; ".join(
        f"{s.get('label', '?')} {s['similarity']:.3f}" if isinstance(s.get("similarity"), float | int)
        else str(s.get("label", "?"))
        for s in shown if isinstance(s, dict)
    )  # fmt: skip
