"""The records' own photos (serve): the originals, boxes and metadata a build read, found from its manifest.

The records hold crops; their manifest names the train.csv, the image folders and the box table the build
read (`sources`). Where those are still readable, the catalogue exports a gallery photo as its original
file with the box the build cropped it by, and takes its metadata from the train.csv's metadata columns
(what an export wrote): an export -> build-tfrecords -> predict -> serve round trip keeps both.
"""

from __future__ import annotations

import logging
from functools import cached_property

from tfwhale.core import files
from tfwhale.imaging.crop_box import format_box
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
        """Image name -> the box text the build cropped it by ('' entries dropped)."""
        from tfrecords_builder.boxes import box_format
        from tfrecords_builder.tables import read_boxes_csv, read_csv_table

        path = self._path("boxes") or self._path("train_csv")
        if path is None:
            return {}
        try:
            own_columns = path != self._path("boxes")  # train.csv: only when it has box columns
            if own_columns and box_format(list(read_csv_table(path, ("image",)).columns)) is None:
                return {}
            chosen = read_boxes_csv(path, self.min_conf)
        except Exception as err:
            logger.warning("%s: boxes not readable (%s): originals are exported without boxes", path, err)
            return {}
        return {image: format_box(box) for image, box in chosen.items() if box is not None}

    def metadata(self) -> dict[str, PhotoMeta]:
        """Image name -> the metadata columns of the build's train.csv (an export's), where it has any."""
        path = self._path("train_csv")
        if path is None:
            return {}
        from tfrecords_builder.tables import read_csv_table

        try:
            table = read_csv_table(path, ("image",))
        except Exception as err:
            logger.warning("%s: not readable (%s): gallery photos get no metadata", path, err)
            return {}
        columns = [name for name in EXPORT_COLUMNS if name in table.columns]
        if not columns:
            return {}
        found = {}
        for record in table[["image", "row", *columns]].to_dict("records"):
            try:
                meta = check_meta({name: record[name] for name in columns}, f"{path}: row {record['row']}")
            except MetaError as err:
                logger.warning("%s; that photo's metadata is left out", err)
                continue
            if not meta.is_empty():
                found[record["image"]] = meta
        return found
