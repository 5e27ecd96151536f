"""The gallery's arrays (predict -> identify, serve): embeddings.npz, written and read only here.

The combined (fold-averaged, run-concatenated) embeddings of the records, what each row is, the searched
gallery when predict post-processed it (whitening, DBA), the whitening that new queries need, and each
fold model's ArcFace class centres when the ranking blends class cosines (--blend).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from tfwhale.core import files

EMBEDDINGS_NAME = "embeddings.npz"


@dataclass(frozen=True)
class FoldCentres:
    """One fold model's ArcFace centres: [D, C * subcenters], L2-normalised columns, class-major."""

    run: int  # index of the run in gallery.json's runs
    fold: str  # its fold folder name
    centres: np.ndarray
    subcenters: int = 1


@dataclass(frozen=True)
class GalleryArrays:
    train: np.ndarray  # [N, D] the records' training photos, combined embeddings
    train_names: list[str]
    train_ids: list[str]
    train_species: list[str]
    train_folds: np.ndarray  # int [N]
    test: np.ndarray  # [T, D] the records' test photos
    test_names: list[str]
    class_names: list[str]  # individual_id by training label (the centres' columns)
    searched: np.ndarray | None = None  # [N, D'] post-processed gallery, when it differs from train
    whitening: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (mean, projection, eigenvalues)
    centres: tuple[FoldCentres, ...] = field(default_factory=tuple)

    @property
    def gallery(self) -> np.ndarray:
        """What queries are ranked against."""
        return self.train if self.searched is None else self.searched

    def centres_of(self, run: int, fold: str) -> FoldCentres | None:
        return next((c for c in self.centres if c.run == run and c.fold == fold), None)


def to_bytes(arrays: GalleryArrays) -> bytes:
    data = {
        "train": arrays.train,
        "test": arrays.test,
        "train_names": np.array(arrays.train_names, dtype=str),
        "train_ids": np.array(arrays.train_ids, dtype=str),
        "train_species": np.array(arrays.train_species, dtype=str),
        "train_folds": np.asarray(arrays.train_folds),
        "test_names": np.array(arrays.test_names, dtype=str),
        "class_names": np.array(arrays.class_names, dtype=str),
    }
    if arrays.searched is not None:
        data["gallery"] = arrays.searched
    if arrays.whitening is not None:
        data.update(
            zip(("whiten_mean", "whiten_projection", "whiten_eigenvalues"), arrays.whitening, strict=True)
        )
    for c in arrays.centres:
        data[f"centres__{c.run}__{c.fold}"] = c.centres
        data[f"subcenters__{c.run}__{c.fold}"] = np.array(c.subcenters)
    buffer = io.BytesIO()
    np.savez(buffer, **data)
    return buffer.getvalue()


def write_gallery_arrays(out_dir: str, arrays: GalleryArrays) -> str:
    path = files.join(out_dir, EMBEDDINGS_NAME)
    files.write_bytes(path, to_bytes(arrays))
    return path


def load_gallery_arrays(path: str) -> GalleryArrays:
    data = np.load(io.BytesIO(files.read_bytes(path)), allow_pickle=False)
    whitening = None
    if "whiten_mean" in data.files:
        whitening = (data["whiten_mean"], data["whiten_projection"], data["whiten_eigenvalues"])
    centres = []
    for key in data.files:
        if key.startswith("centres__"):
            _, run, fold = key.split("__", 2)
            subcenters = int(data[f"subcenters__{run}__{fold}"])
            centres.append(FoldCentres(int(run), fold, data[key], subcenters))
    return GalleryArrays(
        train=data["train"],
        train_names=data["train_names"].tolist(),
        train_ids=data["train_ids"].tolist(),
        train_species=data["train_species"].tolist(),
        train_folds=data["train_folds"],
        test=data["test"],
        test_names=data["test_names"].tolist(),
        class_names=data["class_names"].tolist(),
        searched=data["gallery"] if "gallery" in data.files else None,
        whitening=whitening,
        centres=tuple(centres),
    )
