"""The records' own photos (query path): the original file and box of a records photo, found from the
manifest's `sources` (the train.csv, image folders and box table the build read).

The records hold crops; where the build's inputs are still readable, a gallery photo can be shown or
drawn as its original with the box the build cropped it by: the catalogue's export and compare view,
and identify --explain's match pictures (whose keypoints are in the boxed crop's frame).
"""

from __future__ import annotations

import csv
import io
import logging
from functools import cached_property
from typing import Self

from tfwhale.core import files
from tfwhale.imaging.box_choice import CORNER_COLUMNS, box_format, choose_box, pair
from tfwhale.imaging.crop_box import format_box, parse_box_list, parse_conf_list

logger = logging.getLogger(__name__)

_FOLDER_OF_SOURCE = {"gallery": "train_images", "test": "test_images"}


class RecordsPhotos:
    """Lookups into the inputs of one build; every miss is None or empty, never an error."""

    def __init__(self, sources: dict, min_conf: float = 0.0) -> None:
        self.sources = sources or {}
        self.min_conf = min_conf

    @classmethod
    def of_records(cls, records_root: str) -> Self:
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
            rows = read_rows(path)
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


def read_rows(path: str) -> list[dict[str, str]]:
    """A CSV's rows as stripped strings keyed by stripped column names."""
    reader = csv.DictReader(io.StringIO(files.read_text(path).lstrip("\ufeff")))
    return [
        {(key or "").strip(): (value or "").strip() for key, value in row.items() if isinstance(value, str)}
        for row in reader
    ]


def _row_candidates(row: dict[str, str], fmt: str, min_conf: float) -> list:
    text = " ".join(row[name] for name in CORNER_COLUMNS) if fmt == "corners" else row[fmt]
    return pair(parse_box_list(text), parse_conf_list(row.get("conf", "")), min_conf)
