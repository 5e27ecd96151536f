"""Stage 3 (predict): every run's fold models embed the records; folds averaged, runs concatenated, cached.

Every fold model embeds every train record (the gallery; fold k's model also gives the out-of-fold
embeddings of fold k) and every test record. The arrays are cached per fold under OUT_DIR/cache,
keyed by the fold's run.json, the records' manifest and the TTA, so a second predict with another
threshold or k loads no model.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np

from tfwhale.contracts import run_folder
from tfwhale.contracts.records import Manifest
from tfwhale.contracts.run_folder import FoldModel, Run, RunError
from tfwhale.core import files
from tfwhale.nets.model import load_saved_model
from tfwhale.query.combine import average_folds, check_finite, concat_runs
from tfwhale.query.embedder import TTAModel
from tfwhale.retrieval.postprocess import l2_normalise

logger = logging.getLogger(__name__)

CACHE_DIR = "cache"
CACHE_VERSION = 1
ARCFACE_LAYER = "arcface"  # tfwhale.nets.model names the ArcMarginProduct head after itself


@dataclass(frozen=True)
class RecordsIndex:
    """The rows every embedding array follows: train records fold by fold, then the test records."""

    train_names: list[str]
    train_ids: list[str]
    train_species: list[str]
    train_folds: np.ndarray  # int, per train row
    test_names: list[str]


@dataclass(frozen=True)
class FoldEmbeddings:
    model: FoldModel
    train: np.ndarray  # [N, D] L2-normalised, RecordsIndex order
    test: np.ndarray  # [T, D]
    centres: np.ndarray | None = None  # [D, C * subcenters] L2-normalised ArcFace centres
    subcenters: int = 1


@dataclass(frozen=True)
class RunEmbeddings:
    run: Run
    folds: tuple[FoldEmbeddings, ...]

    @property
    def dim(self) -> int:
        return int(self.folds[0].train.shape[1])

    def averaged(self, split: str) -> np.ndarray:
        return average_folds([getattr(f, split) for f in self.folds])

    def fold(self, name: str) -> FoldEmbeddings | None:
        return next((f for f in self.folds if f.model.name == name), None)


@dataclass(frozen=True)
class PredictEmbeddings:
    index: RecordsIndex
    runs: tuple[RunEmbeddings, ...]
    reused: tuple[str, ...] = ()  # fold paths read from the cache
    computed: tuple[str, ...] = field(default=())  # fold paths embedded by their model this time

    @property
    def weights(self) -> list[float]:
        return [r.run.weight for r in self.runs]

    def combined(self, split: str) -> np.ndarray:
        """Fold-averaged embeddings of every run, concatenated with the run weights."""
        return concat_runs([r.averaged(split) for r in self.runs], self.weights)


def embed_runs(
    runs: Sequence[Run],
    manifest: Manifest,
    out_dir: str,
    batch: int,
    flip: bool = False,
    need_centres: bool = False,
    recompute: bool = False,
) -> PredictEmbeddings:
    """Every fold of every run, from the cache when it matches, else embedded (and cached)."""
    index, results, reused, computed = None, [], [], []
    for run in runs:
        folds = []
        for fold in run.folds:
            cached = None if recompute else read_cache(fold, manifest, out_dir, flip, need_centres)
            if cached is None:
                cached = embed_fold(fold, manifest, batch, flip, need_centres)
                write_cache(out_dir, cached, manifest, flip)
                computed.append(fold.path)
            else:
                reused.append(fold.path)
            fold_embeddings, fold_index = cached
            index = _same_index(index, fold_index, fold)
            folds.append(fold_embeddings)
        _check_dims(run, folds)
        results.append(RunEmbeddings(run, tuple(folds)))
    return PredictEmbeddings(index, tuple(results), tuple(reused), tuple(computed))


def _same_index(index: RecordsIndex | None, new: RecordsIndex, fold: FoldModel) -> RecordsIndex:
    if index is not None and (index.train_names != new.train_names or index.test_names != new.test_names):
        raise RunError(f"{fold.path}: its embeddings list the records in another order than the other folds")
    return new


def _check_dims(run: Run, folds: Sequence[FoldEmbeddings]) -> None:
    dims = {f.model.name: int(f.train.shape[1]) for f in folds}
    if len(set(dims.values())) > 1:
        raise RunError(f"{run.run_dir}: folds embed to different sizes {dims}; they cannot be averaged")


def embed_fold(
    fold: FoldModel, manifest: Manifest, batch: int, flip: bool, need_centres: bool
) -> tuple[FoldEmbeddings, RecordsIndex]:
    """Embed the train records (fold by fold) and the test records with one fold's model."""
    from tfwhale.feed.data import embed

    logger.info("embedding the records with %s%s", fold.path, " (+ flip TTA)" if flip else "")
    model = load_saved_model(fold.file(run_folder.EMBEDDING_MODEL))
    parts = [_embed_tta(embed, model, manifest, "train", [f], batch, flip) for f in range(manifest.n_folds)]
    test = _embed_tta(embed, model, manifest, "test", None, batch, flip)
    index = RecordsIndex(
        train_names=[n for p in parts for n in p[1].names],
        train_ids=[i for p in parts for i in p[1].ids],
        train_species=[s for p in parts for s in p[1].species],
        train_folds=np.concatenate([np.full(len(p[1].names), f) for f, p in enumerate(parts)]).astype(int),
        test_names=list(test[1].names),
    )
    train = np.concatenate([p[0] for p in parts])
    del model
    keras.backend.clear_session(free_memory=True)  # one fold model at a time in memory, however many runs
    check_finite(train, index.train_names, fold.file(run_folder.EMBEDDING_MODEL))
    check_finite(test[0], index.test_names, fold.file(run_folder.EMBEDDING_MODEL))
    centres, subcenters = load_centres(fold, len(manifest.individuals)) if need_centres else (None, 1)
    return FoldEmbeddings(fold, train, test[0], centres, subcenters), index


def _embed_tta(embed, model, manifest: Manifest, split: str, folds, batch: int, flip: bool):
    embedded = embed(TTAModel(model, flip, batch), manifest, split, folds, batch)
    return l2_normalise(embedded.embeddings), embedded


def load_centres(fold: FoldModel, n_classes: int) -> tuple[np.ndarray, int]:
    """The ArcFace class centres of a fold's training model, L2-normalised: ([D, C * k], k)."""
    path = fold.file(run_folder.TRAIN_MODEL)
    if not files.exists(path):
        raise RunError(f"{fold.path}: model.keras is missing; the logits blend needs the training model")
    model = load_saved_model(path)
    try:
        head = model.get_layer(ARCFACE_LAYER)
    except ValueError as err:
        raise RunError(f"{path}: no ArcFace head ({ARCFACE_LAYER!r} layer): the blend needs one") from err
    # augment.flip=new_class trains a mirror class per individual after the real ones (class-major
    # columns); answers are real individuals only, so the mirror centres are dropped
    if head.n_classes not in (n_classes, 2 * n_classes):
        raise RunError(f"{path}: ArcFace head has {head.n_classes} classes, the records {n_classes}")
    kernel = np.asarray(head.kernel.numpy(), np.float32)[:, : n_classes * int(head.k)]
    return l2_normalise(kernel.T).T.copy(), int(head.k)


def cache_path(out_dir: str, fold: FoldModel, flip: bool) -> str:
    """Keyed by the fold's run.json, not its path: a moved run folder still finds its cache."""
    run_name = re.sub(r"[^A-Za-z0-9_.-]", "_", files.basename(fold.run_dir)) or "run"
    name = f"{fold.name}-{fold.run_json_sha256[:12]}{'-flip' if flip else ''}.npz"
    return files.join(out_dir, CACHE_DIR, run_name, name)


def _cache_key(fold: FoldModel, manifest: Manifest, flip: bool) -> dict:
    return {
        "version": CACHE_VERSION,
        "fold": fold.name,
        "run_json_sha256": fold.run_json_sha256,
        "manifest_sha256": manifest.sha256,
        "flip": flip,
    }


def write_cache(
    out_dir: str, cached: tuple[FoldEmbeddings, RecordsIndex], manifest: Manifest, flip: bool
) -> None:
    fold_embeddings, index = cached
    fold = fold_embeddings.model
    arrays = {
        "meta": np.array(json.dumps({**_cache_key(fold, manifest, flip), "run_dir": fold.run_dir})),
        "train": fold_embeddings.train,
        "test": fold_embeddings.test,
        "train_names": np.array(index.train_names, dtype=str),
        "train_ids": np.array(index.train_ids, dtype=str),
        "train_species": np.array(index.train_species, dtype=str),
        "train_folds": index.train_folds,
        "test_names": np.array(index.test_names, dtype=str),
        "subcenters": np.array(fold_embeddings.subcenters),
    }
    if fold_embeddings.centres is not None:
        arrays["centres"] = fold_embeddings.centres
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = cache_path(out_dir, fold, flip)
    files.makedirs(files.dirname(path))
    files.write_bytes(path, buffer.getvalue())
    for name in files.listdir(files.dirname(path)):  # the same fold's arrays from before it was retrained
        stale = name.startswith(f"{fold.name}-") and name.endswith("-flip.npz") == flip
        if stale and name != files.basename(path):
            files.remove(files.join(files.dirname(path), name))


def read_cache(
    fold: FoldModel, manifest: Manifest, out_dir: str, flip: bool, need_centres: bool
) -> tuple[FoldEmbeddings, RecordsIndex] | None:
    """The cached arrays of a fold when they were made by this fold, records and TTA; else None."""
    path = cache_path(out_dir, fold, flip)
    if not files.exists(path):
        return None
    data = np.load(io.BytesIO(files.read_bytes(path)), allow_pickle=False)
    meta, expected = json.loads(str(data["meta"])), _cache_key(fold, manifest, flip)
    if {key: meta.get(key) for key in expected} != expected:
        logger.info("%s: made by another model, records or TTA; embedding again", path)
        return None
    centres = data["centres"] if "centres" in data.files else None
    subcenters = int(data["subcenters"])
    if need_centres and centres is None:
        centres, subcenters = load_centres(fold, len(manifest.individuals))
    index = RecordsIndex(
        train_names=data["train_names"].tolist(),
        train_ids=data["train_ids"].tolist(),
        train_species=data["train_species"].tolist(),
        train_folds=data["train_folds"],
        test_names=data["test_names"].tolist(),
    )
    embeddings = FoldEmbeddings(fold, data["train"], data["test"], centres, subcenters)
    if need_centres and "centres" not in data.files:
        write_cache(out_dir, (embeddings, index), manifest, flip)
    return embeddings, index


def check_oof_files(emb: PredictEmbeddings) -> None:
    """The trainer's oof.npz of fold k must list the images these records put in fold k; otherwise the
    records are another build and the fold models may have trained on their 'out-of-fold' queries."""
    index = emb.index
    for run in emb.runs:
        for fold in run.folds:
            path = fold.model.file(run_folder.OOF_NAME)
            if fold.model.val_fold is None or not files.exists(path):
                continue
            saved = set(np.load(io.BytesIO(files.read_bytes(path)))["image_names"].tolist())
            rows = index.train_folds == fold.model.val_fold
            here = {n for n, is_val in zip(index.train_names, rows, strict=True) if is_val}
            if saved != here:
                raise RunError(
                    f"{path}: the trainer's fold {fold.model.val_fold} held {len(saved)} images, these "
                    f"records put {len(here)} in it ({len(saved ^ here)} differ): the records are from "
                    "another build"
                )
