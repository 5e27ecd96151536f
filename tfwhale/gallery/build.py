"""Day-one gallery: photo folder -> records (build-tfrecords) -> untrained run -> embeddings -> gallery.json.

What predict writes for a trained run, made with a pretrained backbone instead: identify and the catalogue
app read it through the same contracts (gallery.json, embeddings.npz, a run folder found again by the
sha256 of its run.json), and its `extra` says how it was made, so the app can say it is untrained.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

from tfwhale.contracts.gallery_arrays import EMBEDDINGS_NAME, GalleryArrays, write_gallery_arrays
from tfwhale.contracts.gallery_manifest import (
    GalleryManifest,
    GalleryRun,
    remove_gallery_manifest,
    write_gallery_manifest,
)
from tfwhale.contracts.records import REJECTS_NAME, Manifest, load_manifest
from tfwhale.core import files
from tfwhale.gallery.backbone import UntrainedRun, build_embedding_model, describe, save_untrained_run
from tfwhale.gallery.embed import EmbeddedPhotos, embed_records
from tfwhale.gallery.local import LocalOutcome, make_local
from tfwhale.gallery.photos import GalleryInputError, PhotoSet, find_photos, local_path
from tfwhale.gallery.tune import CatalogueTuning, tune_on_catalogue
from tfwhale.retrieval.ranking import RankOptions

logger = logging.getLogger(__name__)

RECORDS_DIR = "records"  # in the gallery folder
BUILT, BUILT_WITH_REJECTS = 0, 3  # build-tfrecords' exit codes that leave a finished build


@dataclass(frozen=True)
class GallerySettings:
    photos: str
    out: str
    backbone: str = "EfficientNetLite0"
    size: int = 224
    flip_tta: bool = False  # left and right flanks differ: a mirrored photo is not the same view
    species: str = "animal"
    boxes: str | None = None
    batch: int = 32
    workers: int | None = None
    new_share: float = 0.2
    seed: int = 0
    progress: bool = True
    local_features: bool = True  # SIFT re-rank, fused with the embedding (issue 24); False: embedding only


@dataclass(frozen=True)
class Reject:
    image: str
    reason: str


@dataclass(frozen=True)
class GalleryOutcome:
    out: str
    photos: int
    individuals: int
    rejects: list[Reject]
    tuning: CatalogueTuning
    label: str  # how pages name the gallery: "untrained gallery (ImageNet Lite0)"


def make_gallery(settings: GallerySettings) -> GalleryOutcome:
    """The whole build; GalleryInputError (or BackboneError) naming what is wrong, before any long work."""
    out = local_path(settings.out)
    photo_set = find_photos(local_path(settings.photos), out, settings.species)
    model = build_embedding_model(settings.backbone, settings.size)  # fails fast without the extra
    remove_gallery_manifest(out)  # from here on the folder's files change: no old gallery.json vouches
    records = build_records(photo_set, settings, files.join(out, RECORDS_DIR))
    run = save_untrained_run(out, records, settings.backbone, settings.flip_tta, model)
    embedded = embed_records(model, records, settings.flip_tta, settings.batch, settings.progress)
    tuning = tune_on_catalogue(embedded.embeddings, embedded.ids, settings.new_share, settings.seed)
    write_gallery_arrays(out, gallery_arrays(embedded, records))
    local = with_local_features(out, photo_set, embedded, records, settings)
    label = f"untrained gallery ({describe(settings.backbone)}{' + SIFT' if local else ''})"
    manifest = gallery_manifest(out, records, run, settings, local.tuning if local else tuning, label)
    if local:
        manifest = dataclasses.replace(
            manifest, rerank="local", local=local.local, embedding_threshold=tuning.policy
        )
        tuning = local.tuning
    write_gallery_manifest(out, manifest)
    rejects = read_rejects(records.root)
    if rejects:
        listed = files.read_text(files.join(records.root, REJECTS_NAME))
        files.write_text(files.join(out, REJECTS_NAME), listed)
    return GalleryOutcome(out, len(embedded.names), len(set(embedded.ids)), rejects, tuning, label)


def with_local_features(
    out: str, photo_set: PhotoSet, embedded: EmbeddedPhotos, records: Manifest, settings: GallerySettings
) -> LocalOutcome | None:
    """The local re-rank of the gallery, or None (asked not to, or it cannot be made: logged why)."""
    if not settings.local_features:
        return None
    if settings.boxes or photo_set.boxed:
        # the box each record was cropped to is chosen inside build-tfrecords and not recorded with it
        logger.warning("local features are not yet made for galleries cropped to boxes; embedding only")
        return None
    try:
        return make_local(
            out, photo_set.images_root, embedded.embeddings, embedded.names, embedded.ids,
            records.image_settings, settings.new_share, settings.seed, settings.progress,
        )  # fmt: skip
    except ValueError as err:  # e.g. no same-individual pair verified anything: nothing to calibrate
        logger.warning("no local re-rank for this gallery (%s); embedding only", err)
        return None


def build_records(photo_set: PhotoSet, settings: GallerySettings, records_dir: str) -> Manifest:
    """build-tfrecords, training records only: resumable, bad photos listed as rejects. Run as its own
    process, as tfwhale.kaggle runs it: the builder imports tfwhale, so tfwhale does not import it."""
    argv = [*photo_set.builder_inputs, "--no-test", "--out", records_dir, "--size", str(settings.size)]
    argv += ["--no-local-features"]  # the day-one gallery takes its own, from the original photos
    argv += ["--boxes", settings.boxes] if settings.boxes else []
    argv += ["--workers", str(settings.workers)] if settings.workers else []
    argv += [] if settings.progress else ["-q"]
    code = subprocess.call([sys.executable, "-m", "tfrecords_builder", *argv])
    if code not in (BUILT, BUILT_WITH_REJECTS):
        raise GalleryInputError(
            f"build-tfrecords could not build {records_dir} from {settings.photos} (exit {code}); "
            "its message above says why"
        )
    records = load_manifest(records_dir)
    if not records.count("train"):
        see = files.join(records_dir, REJECTS_NAME)
        raise GalleryInputError(f"{settings.photos}: no photo could be read; see {see}")
    return records


def read_rejects(records_dir: str) -> list[Reject]:
    path = files.join(records_dir, REJECTS_NAME)
    if not files.exists(path):
        return []
    return [Reject(r["image"], r["reason"]) for r in csv.DictReader(io.StringIO(files.read_text(path)))]


def gallery_arrays(embedded: EmbeddedPhotos, records: Manifest) -> GalleryArrays:
    dim = embedded.embeddings.shape[1]
    return GalleryArrays(
        train=embedded.embeddings,
        train_names=embedded.names,
        train_ids=embedded.ids,
        train_species=embedded.species,
        train_folds=embedded.folds,
        test=np.zeros((0, dim), np.float32),
        test_names=[],
        class_names=records.individuals,
    )


def gallery_manifest(
    out: str,
    records: Manifest,
    run: UntrainedRun,
    settings: GallerySettings,
    tuning: CatalogueTuning,
    label: str,
) -> GalleryManifest:
    extra = {
        "made_by": "tfwhale.gallery",
        "trained": False,
        "backbone": describe(settings.backbone),
        "label": label,
        "photos": files.basename(settings.photos.rstrip("/")) or settings.photos,
        "leave_one_out": {
            "map5": tuning.map5,
            "queries": tuning.tuned.n_queries,
            "new": tuning.tuned.n_new,
            "simulated_new": tuning.tuned.n_simulated,
            "tuned_threshold": tuning.tuned.threshold,
        },
    }
    return GalleryManifest(
        runs=(GalleryRun(run.run_dir, 1.0, run.embedding_dim, {run.fold: run.run_json_sha256}),),
        flip_tta=settings.flip_tta,
        options=dataclasses.asdict(RankOptions()),
        threshold=tuning.policy,
        image=records.image_settings,
        records_root=records.root,
        records_manifest_sha256=records.sha256,
        embeddings_file=EMBEDDINGS_NAME,
        embeddings_sha256=files.sha256(files.join(out, EMBEDDINGS_NAME)),
        extra=extra,
    )
