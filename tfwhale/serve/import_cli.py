"""python -m tfwhale.serve import: bulk-import a folder of photos that already carry ids (serve CLI).

python -m tfwhale.serve import --gallery PREDICT_OUT --catalogue DIR FOLDER [--csv CSV] [--report CSV]
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger("tfwhale.serve")


def parse_import_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tfwhale.serve import",
        description="Bulk-import photos that already carry ids into a catalogue, in one step: a folder of "
        "ID/photo.jpg, or a CSV with columns image, individual_id and optional species, date, latitude, "
        "longitude, place, side, photographer, notes (an export's train.csv imports as it is). Each photo "
        "is embedded as an upload is, then confirmed to its id (registered when the id is new). Stop the "
        "catalogue's server first (or use its Import page). Exit status 1 when any photo was not imported.",
    )
    add = parser.add_argument
    add("folder", metavar="FOLDER", help="the photos: ID/photo.jpg, or the folder the CSV's images are in")
    add("--csv", metavar="CSV", help="image,individual_id[,species,metadata...] (images relative to FOLDER "
        "or FOLDER/train_images)")  # fmt: skip
    add("--gallery", required=True, metavar="PREDICT_OUT", help="the --out folder of a finished predict")
    add("--catalogue", required=True, metavar="DIR", help="the catalogue (created if missing)")
    add("--runs", nargs="+", metavar="RUN_DIR", help="the run folders of that predict (default: as recorded)")
    add("--reviewer", default="", help="the name recorded with the decisions and metadata")
    add("--report", metavar="CSV", help="where to write the per-photo report "
        "(default DIR/imports/<time>-report.csv)")  # fmt: skip
    return parser.parse_args(argv)


def run_import_command(args: argparse.Namespace) -> int:
    from tfwhale.serve import bulk_import
    from tfwhale.serve.startup import StartError, check_catalogue_folder, open_catalogue

    try:
        plan = bulk_import.plan_folder(args.folder, args.csv)
        check_catalogue_folder(args.catalogue)
        catalogue, lock = open_catalogue(args.gallery, args.catalogue, args.runs)
    except (bulk_import.ImportInputError, StartError) as err:
        logger.error("%s", err)
        return 1
    try:
        outcomes = bulk_import.run_import(catalogue, plan, args.reviewer, progress=True)
    finally:
        lock.close()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    report = Path(args.report or Path(args.catalogue) / "imports" / f"{stamp}-report.csv")
    _write_atomic(report, bulk_import.report_csv(outcomes))
    for outcome in outcomes:
        if outcome.status in ("unreadable", "refused"):
            print(f"{outcome.file}: {outcome.status}: {outcome.reason}")
    found = bulk_import.counts(outcomes)
    print(", ".join(f"{n} {status}" for status, n in found.items()) + f"; report: {report}")
    return 1 if found["unreadable"] or found["refused"] else 0


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".tmp-{path.name}")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)
