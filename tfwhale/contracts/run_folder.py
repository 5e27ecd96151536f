"""The run-folder hand-off (train -> predict, identify): file names, fold naming, finished check, loading.

A run folder (tfwhale.train) holds fold{k}/ and/or full/ sub-folders; a finished one has run.json
(status "finished", the records it was trained on), written last, embedding.keras and config.yaml (the
fold's resolved config: what predict checks per fold, since folds may be trained by separate calls).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tfwhale.contracts.records import Manifest
from tfwhale.core import files
from tfwhale.core.config import Config, ConfigError, load_config

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
class RecordsRef:
    """Which build a fold was trained on, as run.json records it."""

    root: str
    manifest_sha256: str
    labels_sha256: str
    n_folds: int
    image_size: int


@dataclass(frozen=True)
class RunRecord:
    """run.json: what a finished fold folder says about itself (written last by the trainer)."""

    fold: str
    val_fold: int | None
    train_folds: list[int]
    epochs: int
    records: RecordsRef
    best: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    seconds_this_session: float = 0.0
    seconds_per_epoch: list[float | None] = field(default_factory=list)
    global_batch: int = 0
    steps_per_epoch: int = 0
    replicas: int = 1
    device: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    status: str = "finished"
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not know (kept as read)

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        return {**body.pop("extra"), **body}

    @classmethod
    def from_json(cls, body: dict[str, Any], path: str) -> RunRecord:
        """RunError naming the file when run.json lacks a field or holds one of the wrong kind."""
        known = {f.name for f in fields(cls)} - {"extra", "records"}
        try:
            records = RecordsRef(**body["records"])
            extra = {key: value for key, value in body.items() if key not in known | {"records"}}
            return cls(**{k: v for k, v in body.items() if k in known}, records=records, extra=extra)
        except (KeyError, TypeError) as err:
            raise RunError(f"{path}: not a run.json this tfwhale can read ({err})") from None


def read_run_record(fold_path: str) -> RunRecord:
    path = files.join(fold_path, RUN_JSON)
    return RunRecord.from_json(files.read_json(path), path)


@dataclass(frozen=True)
class FoldModel:
    """One finished fold folder of a run."""

    run_dir: str
    name: str  # "fold0".. or "full"
    val_fold: int | None  # None for "full": it has no out-of-fold predictions
    run_json_sha256: str
    embedding_dim: int | None  # from the fold's config.yaml, when it has one
    config: Config | None = None  # the fold's resolved config.yaml (None: a fold trained before it was kept)

    @property
    def path(self) -> str:
        return files.join(self.run_dir, self.name)

    def file(self, name: str) -> str:
        return files.join(self.path, name)

    def recipe(self) -> dict[str, Any]:
        """What every fold averaged into one embedding must share (empty without a config)."""
        if self.config is None:
            return {}
        model = self.config.model
        return {
            "augment.flip": self.config.augment.flip,
            "model.backbone": model.backbone,
            "model.head": model.head,
            "model.embedding_dim": model.embedding_dim,
            "data.image_size": self.config.data.image_size,
        }


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
    check_same_recipe(run_dir, folds)
    if not weight > 0:
        raise RunError(f"{run_dir}: run weight must be positive, got {weight}")
    return Run(run_dir, folds, float(weight))


def _load_fold(run_dir: str, name: str, manifest: Manifest) -> FoldModel:
    path = files.join(run_dir, name)
    run_json = files.join(path, RUN_JSON)
    if not files.exists(run_json):
        raise RunError(f"{path}: not finished (no run.json); finish training it or remove the folder")
    text = files.read_text(run_json)
    record = RunRecord.from_json(json.loads(text), run_json)
    if record.status != "finished":
        raise RunError(f"{run_json}: status {record.status!r}, not 'finished'")
    if not files.exists(files.join(path, EMBEDDING_MODEL)):
        raise RunError(f"{path}: embedding.keras is missing; the fold cannot embed images")
    _check_records(run_json, record.records, manifest)
    val_fold = val_fold_of(name)
    if val_fold is not None and record.val_fold != val_fold:
        raise RunError(f"{run_json}: val_fold {record.val_fold!r} but the folder is {name}")
    config = _fold_config(files.join(path, CONFIG_NAME))
    dim = None if config is None else config.model.embedding_dim
    return FoldModel(run_dir, name, val_fold, _sha256_text(text), dim, config)


def _check_records(run_json: str, records: RecordsRef, manifest: Manifest) -> None:
    """Label maps, image size and folds of the training records must be those of --records."""
    problems = []
    if records.labels_sha256 != manifest.labels_sha256:
        problems.append("label maps differ (records.labels_sha256)")
    if records.image_size != manifest.image_size:
        problems.append(f"image size {records.image_size} != {manifest.image_size}")
    if records.n_folds != manifest.n_folds:
        problems.append(f"n_folds {records.n_folds} != {manifest.n_folds}")
    if problems:
        raise RunError(
            f"{run_json}: trained on other records ({records.root}) than {manifest.root}: "
            + "; ".join(problems)
        )
    if records.manifest_sha256 != manifest.sha256:
        logger.warning(
            "%s: trained on another build (%s) with the same labels, size and folds as %s",
            run_json,
            records.root,
            manifest.root,
        )


def check_same_recipe(run_dir: str, folds: tuple[FoldModel, ...]) -> None:
    """Folds trained by separate train calls may differ; those whose embeddings cannot be averaged (another
    flip rule, backbone, head, size) are refused, naming the folds and the setting."""
    recipes = {f.name: f.recipe() for f in folds if f.config is not None}
    for key in sorted({key for recipe in recipes.values() for key in recipe}):
        values = {name: recipe.get(key) for name, recipe in recipes.items()}
        if len({repr(v) for v in values.values()}) > 1:
            shown = ", ".join(f"{name}: {value}" for name, value in sorted(values.items()))
            raise RunError(
                f"{run_dir}: folds were trained with different {key} ({shown}); their embeddings cannot be "
                "averaged. Retrain the odd folds with the same config (--overwrite), or move them to "
                "another run folder"
            )


def _fold_config(path: str) -> Config | None:
    if not files.exists(path):
        return None
    try:
        return load_config(path)
    except ConfigError as err:
        raise RunError(f"{path}: {err}") from None


def recorded_fold(run_dir: str, name: str, run_json_sha256: str, embedding_dim: int | None) -> FoldModel:
    """The fold a gallery was made with, found again in run_dir: RunError unless run.json is the same."""
    if not files.isdir(run_dir):
        raise RunError(f"{run_dir}: run folder not found")
    run_json = files.join(run_dir, name, RUN_JSON)
    if not files.exists(run_json):
        raise RunError(f"{run_json}: missing (the gallery was made with this fold)")
    if _sha256_text(files.read_text(run_json)) != run_json_sha256:
        raise RunError(f"{run_json}: not the fold the gallery was made with (retrained since?)")
    model = files.join(run_dir, name, EMBEDDING_MODEL)
    if not files.exists(model):
        raise RunError(f"{model}: missing; the fold cannot embed photos")
    config = _fold_config(files.join(run_dir, name, CONFIG_NAME))
    return FoldModel(run_dir, name, val_fold_of(name), run_json_sha256, embedding_dim, config)


def load_embedding_model(fold: FoldModel):
    """The fold's embedding model (0-255 pixels -> L2-normalised embedding), custom objects registered."""
    from tfwhale.nets.model import load_saved_model  # Keras loads only when a model is wanted

    return load_saved_model(fold.file(EMBEDDING_MODEL))


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
