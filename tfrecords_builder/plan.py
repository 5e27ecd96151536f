"""build-tfrecords shard plan: which image goes into which shard, in a seeded order, with a fingerprint."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tfwhale.contracts import records
from tfwhale.imaging.crop_box import Box


@dataclass(frozen=True)
class PlanItem:
    """One image and everything its record will hold; label fields stay empty for test images."""

    image: str
    path: str
    row: int | None
    box: Box | None
    individual_id: str = ""
    label: int = -1
    species: str = ""
    species_label: int = -1
    fold: int = -1

    def content(self) -> list[Any]:
        """What decides the record's bytes (the source path and CSV row do not)."""
        box = None if self.box is None else [float(v) for v in self.box]
        return [self.image, box, self.individual_id, self.label, self.species, self.species_label, self.fold]


@dataclass(frozen=True)
class PlannedShard:
    """One output file: its name, split, fold (train only), images in write order, and fingerprint."""

    name: str
    split: str
    fold: int | None
    items: tuple[PlanItem, ...]
    fingerprint: str


def plan_fingerprint(name: str, items: Sequence[PlanItem], settings: dict[str, Any]) -> str:
    """A hash of the image settings and of every record a shard will hold, in order.

    A finished shard of an interrupted build is reused only when its fingerprint still matches.
    """
    payload = {"name": name, "settings": settings, "items": [item.content() for item in items]}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _split(items: list[PlanItem], images_per_shard: int) -> list[list[PlanItem]]:
    """Near-equal consecutive pieces of at most `images_per_shard` images each."""
    if not items:
        return []
    n_shards = math.ceil(len(items) / images_per_shard)
    bounds = np.linspace(0, len(items), n_shards + 1).round().astype(int)
    return [items[start:stop] for start, stop in itertools.pairwise(bounds)]


def fold_order(items: Sequence[PlanItem], fold: int, seed: int) -> list[PlanItem]:
    """The images of one fold in a seeded shuffled order that does not depend on the CSV's row order."""
    by_name = sorted(items, key=lambda item: item.image)
    order = np.random.default_rng([seed, fold]).permutation(len(by_name))
    return [by_name[i] for i in order]


def plan_shards(
    train_items: Sequence[PlanItem],
    test_items: Sequence[PlanItem],
    n_folds: int,
    seed: int,
    images_per_shard: int,
    settings: dict[str, Any],
) -> list[PlannedShard]:
    """Train shards fold by fold (shuffled within the fold), then test shards in image-name order."""
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
    shards: list[PlannedShard] = []
    for fold in range(n_folds):
        in_fold = fold_order([item for item in train_items if item.fold == fold], fold, seed)
        for index, part in enumerate(_split(in_fold, images_per_shard)):
            name = records.train_shard_name(fold, index)
            shards.append(
                PlannedShard(name, "train", fold, tuple(part), plan_fingerprint(name, part, settings))
            )
    in_name_order = sorted(test_items, key=lambda item: item.image)
    for index, part in enumerate(_split(in_name_order, images_per_shard)):
        name = records.test_shard_name(index)
        shards.append(PlannedShard(name, "test", None, tuple(part), plan_fingerprint(name, part, settings)))
    return shards


def _row(value: Any) -> int | None:
    """CSV line number, or None for images that came from a folder listing (pandas may hold NaN)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


def train_items(
    train: pd.DataFrame,
    folds: np.ndarray,
    individuals: Sequence[str],
    species: Sequence[str],
    boxes: Mapping[str, Box | None],
) -> list[PlanItem]:
    """Plan items for the training table: labels are indexes into the sorted label lists."""
    label_of = {name: index for index, name in enumerate(individuals)}
    species_of = {name: index for index, name in enumerate(species)}
    return [
        PlanItem(
            image=row.image,
            path=row.path,
            row=_row(row.row),
            box=boxes.get(row.image),
            individual_id=row.individual_id,
            label=label_of[row.individual_id],
            species=row.species,
            species_label=species_of[row.species],
            fold=int(fold),
        )
        for row, fold in zip(train.itertuples(index=False), folds, strict=True)
    ]


def test_items(test: pd.DataFrame, boxes: Mapping[str, Box | None]) -> list[PlanItem]:
    return [
        PlanItem(image=row.image, path=row.path, row=_row(row.row), box=boxes.get(row.image))
        for row in test.itertuples(index=False)
    ]
