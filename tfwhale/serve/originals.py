"""The records' own photos (serve): the originals and boxes a build read (query.records_photos), and the
metadata columns of its train.csv, found from its manifest.

Where the build's inputs are still readable, the catalogue exports a gallery photo as its original file
with the box the build cropped it by, and takes its metadata from the train.csv's metadata columns (what
an export wrote): an export -> build-tfrecords -> predict -> serve round trip keeps both.
"""

from __future__ import annotations

import logging

from tfwhale.query.records_photos import RecordsPhotos, read_rows
from tfwhale.serve.metadata import EXPORT_COLUMNS, MetaError, PhotoMeta, check_meta

logger = logging.getLogger(__name__)


class RecordsOriginals(RecordsPhotos):
    """RecordsPhotos and the metadata of the build's train.csv; every miss is None or empty."""

    def metadata(self) -> dict[str, PhotoMeta]:
        """Image name -> the metadata columns of the build's train.csv (an export's), where it has any."""
        path = self.build.path("train_csv")
        if path is None:
            return {}
        try:
            rows = read_rows(path)
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
