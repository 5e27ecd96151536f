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

from tfwhale.contracts.build_sources import BuildSources
from tfwhale.core import files
from tfwhale.imaging.crop_box import format_box

logger = logging.getLogger(__name__)

_SPLIT_OF_SOURCE = {"gallery": "train", "test": "test"}


class RecordsPhotos:
    """Lookups into the inputs of one build (BuildSources, lenient); every miss is None or empty."""

    def __init__(self, build: BuildSources) -> None:
        self.build = build

    @classmethod
    def of_records(cls, records_root: str) -> Self:
        from tfwhale.contracts.records import load_manifest

        try:
            manifest = load_manifest(records_root)
        except Exception as err:  # no manifest, no originals: the export says so
            logger.warning("%s: cannot read the records' manifest (%s): no originals", records_root, err)
            return cls(BuildSources({}, strict=False))
        return cls(BuildSources.of_manifest(manifest, strict=False))

    def folder(self, source: str) -> str | None:
        """The image folder the build read a catalogue photo source ('gallery', 'test') from."""
        return self.build.folder(_SPLIT_OF_SOURCE.get(source, ""))

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
        """Image name -> the box text the build cropped it by (BuildSources.boxes: its --boxes table, else
        the train.csv's own box columns); photos without a box are left out."""
        return {image: format_box(box) for image, box in self.build.boxes().items() if box is not None}


def read_rows(path: str) -> list[dict[str, str]]:
    """A CSV's rows as stripped strings keyed by stripped column names."""
    reader = csv.DictReader(io.StringIO(files.read_text(path).lstrip("\ufeff")))
    return [
        {(key or "").strip(): (value or "").strip() for key, value in row.items() if isinstance(value, str)}
        for row in reader
    ]
