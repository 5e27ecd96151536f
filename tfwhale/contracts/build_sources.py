"""A build's inputs (records contract): the tables and photo folders manifest.json's `sources` names, and
the box each photo was cropped by; one reader, strict for the builder and lenient for display.

strict (build-tfrecords add-local-features: its features must be byte-identical to the build's crops):
a table changed since the build, or one that cannot be read, is an error naming its file, row and field.
lenient (the catalogue's export and compare view, identify --explain): every miss is None or empty.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Self

from tfwhale.contracts.records import Manifest, ManifestError
from tfwhale.core import files
from tfwhale.imaging.box_table import read_box_table
from tfwhale.imaging.crop_box import Box

logger = logging.getLogger(__name__)

TABLES = ("train_csv", "test_csv", "boxes")  # the sources recorded with their sha256
FOLDERS = {"train": "train_images", "test": "test_images"}  # split -> its photo folder's source


class BuildSources:
    """The `sources` of one build: where its tables and photos are, and the boxes its --boxes table chose."""

    def __init__(self, sources: Mapping[str, Any] | None, min_conf: float = 0.0, *, strict: bool) -> None:
        self.sources = dict(sources or {})
        self.min_conf = min_conf
        self.strict = strict

    @classmethod
    def of_manifest(cls, manifest: Manifest, *, strict: bool) -> Self:
        """The sources a manifest recorded, and the --min-conf its boxes were chosen with."""
        data = manifest.data
        return cls(data.get("sources"), float(data.get("crop", {}).get("min_conf") or 0.0), strict=strict)

    def path(self, key: str) -> str | None:
        """The path the build read a source ('train_csv', 'boxes', 'train_images', ...) from; None: none."""
        entry = self.sources.get(key)
        return entry.get("path") if isinstance(entry, dict) and entry.get("path") else None

    def folder(self, split: str) -> str | None:
        """The photo folder of a split ('train', 'test') as the build read it."""
        return self.path(FOLDERS.get(split, ""))

    def check_unchanged(self) -> None:
        """ManifestError when a table the build read has changed since (its boxes crop the photos)."""
        for key in TABLES:
            entry = self.sources.get(key)
            if entry and files.sha256(entry["path"]) != entry["sha256"]:
                raise ManifestError(
                    f"{entry['path']}: changed since the build (sha256 differs from manifest.json); "
                    "the crops would differ from the records: rebuild instead"
                )

    def box_table(self) -> dict[str, Box | None] | None:
        """image -> the box the build's --boxes table chose for it; None when it had no such table.

        strict: a table that cannot be read is a box_table.TableError; lenient: it gives {} (logged).
        """
        path = self.path("boxes")
        if path is None:
            return None
        return read_box_table(path, self.min_conf, strict=self.strict)

    def boxes(self) -> dict[str, Box | None]:
        """image -> box: the --boxes table's choice, else the box columns of the train CSV (rows of an
        image pooled; a train CSV without box columns gives {})."""
        table = self.box_table()
        if table is not None:
            return table
        path = self.path("train_csv")
        return {} if path is None else read_box_table(path, self.min_conf, strict=False)
