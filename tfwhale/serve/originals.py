"""The records' own photos (serve): the originals, boxes and metadata a build read, found from its manifest.

The records hold crops; their manifest names the train.csv, the image folders and the box table the build
read (`sources`). Where those are still readable, the catalogue exports a gallery photo as its original
file with the box the build cropped it by, and takes its metadata from the train.csv's metadata columns
(what an export wrote): an export -> build-tfrecords -> predict -> serve round trip keeps both.
"""

from __future__ import annotations

import csv
import io
import logging
from functools import cached_property

from tfwhale.core import files
from tfwhale.imaging.box_choice import CORNER_COLUMNS, box_format, choose_box, pair
from tfwhale.imaging.crop_box import format_box, parse_box_list, parse_conf_list
from tfwhale.serve.metadata import EXPORT_COLUMNS, MetaError, PhotoMeta, check_meta

logger = logging.getLogger(__name__)

_FOLDER_OF_SOURCE = {"gallery": "train_images", "test": "test_images"}


class RecordsOriginals:
    """Lookups into the inputs of one build; every miss is None or empty, never an error."""

    def __init__(self, sources: dict, min_conf: float = 0.0) -> None:
        self.sources = sources or {}
        self.min_conf = min_conf

    @classmethod
    def of_records(cls, records_root: str) -> RecordsOriginals:
        from tfwhale.contracts.records import load_manifest

        try:
            data = load_manifest(records_root).data
        except Exception as err:  # no manifest, no originals: the export says so
            logger.warning("%s: cannot read the records' manifest (%s): no originals", records_root, err)
            return cls({})
        return cls(data.get("sources", {}), float(data.get("crop", {}).get("min_conf") or 0.0))

    def _path(self, key: str) -> str | None:
        entry = self.sources.get(key)
        return entry.get("path") if isinstance(entry, dict) and entry.get("path") else None

    def folder(self, source: str) -> str | None:
        """The image folder the build read a catalogue photo source ('gallery', 'test') from."""
        return self._path(_FOLDER_OF_SOURCE.get(source, ""))

    def original(self, source: str, name: str) -> bytes | None:
        """The original file of a records photo, or None when its folder or file is not readable."""
        folder = self.folder(source)
        if folder is None:
            return None
        try:
            return files.read_bytes(files.join(folder, name))
        except Exception:  # moved, deleted, unmounted: the crop is exported instead
            return None

    @cached_property
    def boxes(self) -> dict[str, str]:
        """Image name -> the box text the build cropped it by (its --boxes table, else the train.csv's
        own box columns), chosen by the builder's rule (box_choice); photos without a box are left out."""
        path = self._path("boxes") or self._path("train_csv")
        if path is None:
            return {}
        try:
            rows = _read_rows(path)
            fmt = box_format(list(rows[0])) if rows else None
            if fmt is None:
                return {}
            pooled: dict[str, list] = {}
            for row in rows:
                pooled.setdefault(row.get("image", ""), []).extend(_row_candidates(row, fmt, self.min_conf))
        except (OSError, ValueError) as err:
            logger.warning("%s: boxes not readable (%s): originals are exported without boxes", path, err)
            return {}
        chosen = {image: choose_box(cands, self.min_conf) for image, cands in pooled.items() if image}
        return {image: format_box(box) for image, box in chosen.items() if box is not None}

    def metadata(self) -> dict[str, PhotoMeta]:
        """Image name -> the metadata columns of the build's train.csv (an export's), where it has any."""
        path = self._path("train_csv")
        if path is None:
            return {}
        try:
            rows = _read_rows(path)
        except (OSError, ValueError) as err:
            logger.warning("%s: not readable (%s): gallery photos get no metadata", path, err)
            return {}
        columns = [name for name in EXPORT_COLUMNS if rows and name in rows[0]]
        found = {}
        for line, row in enumerate(rows if columns else [], start=2):
            try:
                meta = check_meta({name: row[name] for name in columns}, f"{path}: row {line}")
            except MetaError as err:
                logger.warning("%s; that photo's metadata is left out", err)
                continue
            if not meta.is_empty():
                found[row.get("image", "")] = meta
        return found


def _read_rows(path: str) -> list[dict[str, str]]:
    """A CSV's rows as stripped strings keyed by stripped column names."""
    reader = csv.DictReader(io.StringIO(files.read_text(path).lstrip("\ufeff")))
    return [
        {(key or "").strip(): (value or "").strip() for key, value in row.items() if isinstance(value, str)}
        for row in reader
    ]


def _row_candidates(row: dict[str, str], fmt: str, min_conf: float) -> list:
    text = " ".join(row[name] for name in CORNER_COLUMNS) if fmt == "corners" else row[fmt]
    return pair(parse_box_list(text), parse_conf_list(row.get("conf", "")), min_conf)
