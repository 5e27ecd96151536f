"""The catalogue's exports (serve): the Kaggle layout build-tfrecords takes, and the decisions CSV.

DIR/exports/<time>/train.csv (image, species, individual_id), train_images/<hash>.jpg and boxes.csv
(the boxes drawn in the app): the next `build-tfrecords --data ... --boxes ...` starts from it.
Gallery photos are exported as the crops the records hold (their originals are not in the records).
"""

from __future__ import annotations

import csv
import io
import os
import shlex
import shutil
from datetime import UTC, datetime
from pathlib import Path

from tfwhale.serve.store import Store

UNKNOWN_SPECIES = "unknown"  # build-tfrecords drops rows without a species


def export_catalogue(catalogue, out: str | Path | None = None) -> Path:
    """Write the export into a fresh folder (a temporary one renamed at the end); returns it."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    final = Path(out) if out is not None else catalogue.dir / "exports" / stamp
    temp = final.with_name(f".tmp-{final.name}")
    (temp / "train_images").mkdir(parents=True, exist_ok=False)
    rows = catalogue.store.conn.execute(
        "SELECT p.sha256, p.source, p.box, p.individual_id, i.species FROM photos p "
        "JOIN individuals i ON i.id = p.individual_id ORDER BY p.individual_id, p.sha256"
    ).fetchall()
    train, boxes = io.StringIO(), io.StringIO()
    train_csv, boxes_csv = csv.writer(train, lineterminator="\n"), csv.writer(boxes, lineterminator="\n")
    train_csv.writerow(["image", "species", "individual_id"])
    boxes_csv.writerow(["image", "box"])
    for sha, _source, box, individual, species in rows:
        image = f"{sha}.jpg"
        source_file = catalogue.blobs.path(sha)
        if not source_file.exists():
            continue  # a gallery photo whose records were not readable: nothing to export
        try:
            os.link(source_file, temp / "train_images" / image)  # same disk: no copy needed
        except OSError:
            shutil.copyfile(source_file, temp / "train_images" / image)
        train_csv.writerow([image, species or UNKNOWN_SPECIES, individual])
        if box:
            boxes_csv.writerow([image, box])
    (temp / "train.csv").write_text(train.getvalue(), encoding="utf-8")
    (temp / "boxes.csv").write_text(boxes.getvalue(), encoding="utf-8")
    (temp / "decisions.csv").write_text(decisions_csv(catalogue.store), encoding="utf-8")
    os.replace(temp, final)
    return final


def build_command(folder: Path) -> str:
    return shlex.join(
        [
            "build-tfrecords",
            "--data",
            str(folder),
            "--boxes",
            str(folder / "boxes.csv"),
            "--out",
            "RECORDS_DIR",
        ]
    )


def decisions_csv(store: Store) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = ["id", "decided_at", "reviewer", "action", "individual_id", "photo_sha256", "note", "scores"]
    writer.writerow(columns)
    for row in store.decisions():
        writer.writerow([_cell(row[c]) for c in columns])
    return out.getvalue()


def _cell(value) -> str:
    """Spreadsheets run cells that start with = + - @ as formulas: prefix those from user text."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text
