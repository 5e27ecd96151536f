"""The catalogue's exports (serve): the Kaggle layout build-tfrecords takes, and the decisions CSV.

DIR/exports/<time>/train.csv (image, species, individual_id), train_images/<hash>.jpg and, when boxes were
drawn in the app, boxes.csv: the command build_command prints (the gallery's own size and crop recipe)
builds records from it as printed. Gallery photos are exported as the crops the records hold (their
originals are not in the records).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tfwhale.contracts.individual_id import control_problem, id_problem
from tfwhale.core.csv_text import csv_text, spreadsheet_safe
from tfwhale.serve.store import Store

UNKNOWN_SPECIES = "unknown"  # build-tfrecords drops rows without a species
BOXES_NAME = "boxes.csv"
RECORDS_PLACEHOLDER = "RECORDS_DIR"


@dataclass(frozen=True)
class Export:
    folder: Path
    has_boxes: bool
    warnings: list[str]  # rows the builder will refuse (ids or species from before today's rules)


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
        "SELECT p.sha256, p.source, p.box, p.individual_id, i.species FROM photos p "
        "JOIN individuals i ON i.id = p.individual_id ORDER BY p.individual_id, p.sha256"
    ).fetchall()
    train, boxes = [["image", "species", "individual_id"]], [["image", "box"]]
    for sha, _source, box, individual, species in rows:
        image = f"{sha}.jpg"
        source_file = catalogue.blobs.path(sha)
        if not source_file.exists():
            continue  # a gallery photo whose records were not readable: nothing to export
        try:
            os.link(source_file, temp / "train_images" / image)  # same disk: no copy needed
        except OSError:
            shutil.copyfile(source_file, temp / "train_images" / image)
        train.append([image, species or UNKNOWN_SPECIES, individual])
        if box:
            boxes.append([image, box])
    (temp / "train.csv").write_text(csv_text(train), encoding="utf-8")
    if len(boxes) > 1:  # the builder refuses a boxes.csv without rows
        (temp / BOXES_NAME).write_text(csv_text(boxes), encoding="utf-8")
    (temp / "decisions.csv").write_text(decisions_csv(catalogue.store), encoding="utf-8")
    os.replace(temp, final)
    return Export(final, len(boxes) > 1, _refused(train[1:]))


def _refused(rows: list[list[str]]) -> list[str]:
    """One line per id or species build-tfrecords will refuse (kept from before today's rules)."""
    found = {}
    for _image, species, individual in rows:
        if problem := id_problem(individual):
            found.setdefault(f"id {individual!r}", problem)
        if problem := control_problem(species):
            found.setdefault(f"species {species!r}", problem)
    return [f"train.csv: {what} {why}: edit it before building" for what, why in found.items()]


def build_command(folder: Path, settings=None, has_boxes: bool | None = None) -> str:
    """The build-tfrecords command that turns an export into records, runnable as printed: the
    gallery's image size and crop recipe (`settings`, identify's ImageSettings), no test split, and
    --boxes only when the export has boxes.csv."""
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
