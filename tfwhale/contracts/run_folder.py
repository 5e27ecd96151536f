"""The run-folder hand-off (train -> predict, identify): file names, fold naming, finished check, loading.

A run folder (tfwhale.train) holds fold{k}/ and/or full/ sub-folders; a finished one has run.json
(status "finished", the records it was trained on), written last, and embedding.keras.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass

import yaml

from tfwhale.contracts.records import Manifest
from tfwhale.core import files

logger = logging.getLogger(__name__)

FULL = "full"
_FOLD_DIR = re.compile(r"^fold(\d+)$")

# What a fold folder holds; the trainer writes these names and every reader takes them from here.
RUN_JSON = "run.json"  # written last: its status "finished" says the folder is whole
CONFIG_NAME = "config.yaml"
EMBEDDING_MODEL = "embedding.keras"
TRAIN_MODEL = "model.keras"
OOF_NAME = "oof.npz"
HISTORY_NAME = "history.csv"
CURVE_NAME = "training_curve.png"


def fold_dir_name(val_fold: int | None) -> str:
    """fold{k} for the model that held fold k out, full for one trained on every fold."""
    return FULL if val_fold is None else f"fold{val_fold}"


def val_fold_of(name: str) -> int | None:
    match = _FOLD_DIR.match(name)
    return int(match.group(1)) if match else None


def is_finished(fold_path: str) -> bool:
    """True when the fold folder's run.json says it finished (it is written after every other file)."""
    path = files.join(fold_path, RUN_JSON)
    return files.exists(path) and files.read_json(path).get("status") == "finished"


class RunError(ValueError):
    """A run folder predict cannot use: unfinished, trained on other records, or inconsistent."""


@dataclass(frozen=True)
class FoldModel:
    """One finished fold folder of a run."""

    run_dir: str
    name: str  # "fold0".. or "full"
    val_fold: int | None  # None for "full": it has no out-of-fold predictions
    run_json_sha256: str
    embedding_dim: int | None  # from the fold's config.yaml, when it has one

    @property
    def path(self) -> str:
        return files.join(self.run_dir, self.name)

    def file(self, name: str) -> str:
        return files.join(self.path, name)


@dataclass(frozen=True)
class Run:
    run_dir: str
    folds: tuple[FoldModel, ...]
    weight: float = 1.0

    def fold(self, name: str) -> FoldModel | None:
        return next((f for f in self.folds if f.name == name), None)


def load_run(run_dir: str, manifest: Manifest, weight: float = 1.0) -> Run:
    """The finished fold folders of a run, checked against the records; RunError naming the file."""
    if not files.isdir(run_dir):
        raise RunError(f"{run_dir}: run folder not found")
    names = [n for n in files.listdir(run_dir) if _FOLD_DIR.match(n) or n == FULL]
    names = [n for n in names if files.isdir(files.join(run_dir, n))]
    if not names:
        raise RunError(
            f"{run_dir}: no fold folders (fold0/, fold1/, ... or full/); is it a tfwhale.train run?"
        )
    folds = tuple(_load_fold(run_dir, name, manifest) for name in names)
    dims = {f.name: f.embedding_dim for f in folds if f.embedding_dim is not None}
    if len(set(dims.values())) > 1:
        raise RunError(f"{run_dir}: folds have different embedding sizes {dims}; they cannot be averaged")
    if not weight > 0:
        raise RunError(f"{run_dir}: run weight must be positive, got {weight}")
    return Run(run_dir, folds, float(weight))


def _load_fold(run_dir: str, name: str, manifest: Manifest) -> FoldModel:
    path = files.join(run_dir, name)
    run_json = files.join(path, RUN_JSON)
    if not files.exists(run_json):
        raise RunError(f"{path}: not finished (no run.json); finish training it or remove the folder")
    text = files.read_text(run_json)
    info = json.loads(text)
    if info.get("status") != "finished":
        raise RunError(f"{run_json}: status {info.get('status')!r}, not 'finished'")
    if not files.exists(files.join(path, EMBEDDING_MODEL)):
        raise RunError(f"{path}: embedding.keras is missing; the fold cannot embed images")
    _check_records(run_json, info.get("records") or {}, manifest)
    val_fold = val_fold_of(name)
    if val_fold is not None and info.get("val_fold") != val_fold:
        raise RunError(f"{run_json}: val_fold {info.get('val_fold')!r} but the folder is {name}")
    sha = _sha256_text(text)
    return FoldModel(run_dir, name, val_fold, sha, _config_embedding_dim(files.join(path, CONFIG_NAME)))


def _check_records(run_json: str, records: dict, manifest: Manifest) -> None:
    """Label maps, image size and folds of the training records must be those of --records."""
    problems = []
    if records.get("labels_sha256") != manifest.labels_sha256:
        problems.append("label maps differ (records.labels_sha256)")
    if records.get("image_size") != manifest.image_size:
        problems.append(f"image size {records.get('image_size')} != {manifest.image_size}")
    if records.get("n_folds") != manifest.n_folds:
        problems.append(f"n_folds {records.get('n_folds')} != {manifest.n_folds}")
    if problems:
        raise RunError(
            f"{run_json}: trained on other records ({records.get('root')}) than {manifest.root}: "
            + "; ".join(problems)
        )
    if records.get("manifest_sha256") != manifest.sha256:
        logger.warning(
            "%s: trained on another build (%s) with the same labels, size and folds as %s",
            run_json,
            records.get("root"),
            manifest.root,
        )


def _config_embedding_dim(path: str) -> int | None:
    if not files.exists(path):
        return None
    data = yaml.safe_load(files.read_text(path)) or {}
    dim = (data.get("model") or {}).get("embedding_dim")
    return int(dim) if dim is not None else None


def recorded_fold(run_dir: str, name: str, run_json_sha256: str, embedding_dim: int | None) -> FoldModel:
    """The fold a gallery was made with, found again in run_dir: RunError unless run.json is the same."""
    if not files.isdir(run_dir):
        raise RunError(f"{run_dir}: run folder not found (the gallery was made with it)")
    run_json = files.join(run_dir, name, RUN_JSON)
    if not files.exists(run_json):
        raise RunError(f"{run_json}: missing (the gallery was made with fold {name} of {run_dir})")
    if _sha256_text(files.read_text(run_json)) != run_json_sha256:
        raise RunError(f"{run_json}: not the fold the gallery was made with (it was trained again since)")
    fold = FoldModel(run_dir, name, val_fold_of(name), run_json_sha256, embedding_dim)
    if not files.exists(fold.file(EMBEDDING_MODEL)):
        raise RunError(
            f"{fold.file(EMBEDDING_MODEL)}: missing; new photos are embedded with it: restore it, or train "
            "the fold again and rerun predict"
        )
    return fold


def load_embedding_model(fold: FoldModel):
    """The fold's embedding model (0-255 pixels -> L2-normalised embedding), custom objects registered."""
    from tfwhale.nets.model import load_saved_model  # Keras loads only when a model is wanted

    return load_saved_model(fold.file(EMBEDDING_MODEL))


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
