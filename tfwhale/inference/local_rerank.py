"""Stage 3 (predict), --rerank local: the records' local features, their out-of-fold calibrations and
tuned threshold (inference.local_oof), and the test queries re-ranked by the query path's own
LocalRerankPath, which identify and serve answer with from gallery.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from tfwhale.contracts.gallery_manifest import GalleryManifest, LocalRerank, ThresholdPolicy
from tfwhale.contracts.local_features import (
    FeatureSet,
    LocalFeatures,
    LocalFeaturesError,
    load_feature_set,
    save_feature_set,
)
from tfwhale.contracts.records import Manifest, ManifestError
from tfwhale.core import files
from tfwhale.inference.gallery import PredictEmbeddings, RecordsIndex
from tfwhale.inference.local_oof import OOFSample, Variant, calibrate_and_tune, oof_evidence, sample_queries
from tfwhale.inference.submission import PredictError
from tfwhale.matching.features import SiftSettings
from tfwhale.matching.rerank import Evidence
from tfwhale.query.local import LocalRerankPath, MatchSettings
from tfwhale.retrieval.ranking import Ranked

logger = logging.getLogger("tfwhale.predict")

FEATURES_NAME = "local_features.npz"  # in predict's output folder: the gallery's features, in its order


def add_features_command(manifest: Manifest) -> str:
    sources = manifest.data.get("sources", {})
    images = sources.get("train_images", {}).get("path", "TRAIN_IMAGES")
    command = f"build-tfrecords add-local-features --out {manifest.root} --images {images}"
    if "test_images" in sources:
        command += f" --test-images {sources['test_images']['path']}"
    return command


def has_features(manifest: Manifest) -> bool:
    return bool(manifest.data.get("local_features"))


@dataclass(frozen=True)
class RecordFeatures:
    """The records' local features in predict's row order (RecordsIndex), and how they were taken."""

    train: FeatureSet
    test: list[LocalFeatures]
    sift: SiftSettings


def load_record_features(manifest: Manifest, index: RecordsIndex) -> RecordFeatures:
    """Every record's features from the build's per-shard files (each checked by its sha256);
    PredictError naming add-local-features when the records were built without them."""
    try:
        found = manifest.local_features
    except ManifestError as err:
        raise PredictError(str(err)) from None
    if found is None:
        raise PredictError(
            f"{manifest.root}: the records were built without local features, which --rerank local needs; "
            f"add them without rebuilding the images: `{add_features_command(manifest)}` (or predict with "
            "--rerank none)"
        )
    by_name: dict[str, LocalFeatures] = {}
    for entry in found.files:
        path = files.join(manifest.root, entry.name)
        try:
            features = load_feature_set(path, entry.sha256)
        except (LocalFeaturesError, OSError) as err:
            raise PredictError(f"{err}; run `build-tfrecords verify {manifest.root}`") from None
        by_name.update((name, features[i]) for i, name in enumerate(features.names))
    missing = [n for n in (*index.train_names, *index.test_names) if n not in by_name]
    if missing:
        raise PredictError(f"{manifest.root}: no local features for {len(missing)} record(s), e.g. "
                           f"{missing[:3]}; run `{add_features_command(manifest)}`")  # fmt: skip
    train = FeatureSet.from_photos(list(index.train_names), [by_name[n] for n in index.train_names])
    return RecordFeatures(train, [by_name[n] for n in index.test_names], SiftSettings.from_stored(found.sift))


@dataclass(frozen=True)
class LocalOutcome:
    """What --rerank local adds: the gallery.json section, the fused OOF ranking and its tuned threshold,
    the three variants' OOF scores (report.json), and the test queries ranked by fused P."""

    local: LocalRerank
    fused: Variant
    variants: dict[str, dict]
    ranked: Ranked  # test queries, by fused P (every individual)
    report: dict  # report.json's "rerank" section
    # what examples.png draws matches from (examples.verified_photos): the re-rank, and per test query
    # (the records index's order) its features and its evidence
    path: LocalRerankPath | None = None
    test_features: tuple[LocalFeatures, ...] = ()
    evidence: tuple[Evidence, ...] = ()
    oof_sample: OOFSample | None = None  # the OOF queries the fused scores above were measured on


def report_section(
    local: LocalRerank, variants: dict[str, dict], features: RecordFeatures, sample: OOFSample
) -> dict:
    n = len(features.train) + len(features.test)
    keypoints = len(features.train.descriptors) + sum(len(f) for f in features.test)
    return {
        "mode": "local",
        "oof": variants,
        "oof_queries": sample.section(),  # how many OOF queries were re-ranked, of how many
        "calibration": "isotonic P(same individual) of the cosine, the inliers and the LNBNN votes, "
        "cross-fitted over the validation folds; local = mean of P(inliers) and P(votes); fused = mean "
        "of all three, which ranks and which the threshold is on",
        "settings": {"sift": local.sift, "pairs": local.pairs, "rerank": local.rerank},
        "keypoints_per_photo": round(keypoints / n, 1) if n else 0.0,
        "features_file": local.features_file,
    }


def rerank_local(
    out_dir: str,
    manifest: Manifest,
    emb: PredictEmbeddings,
    test_ranked: Ranked,
    settings,
    progress: bool = True,
) -> LocalOutcome:
    """The whole --rerank local pass. test_ranked: the embedding's ranking of every individual per test
    query. settings: predict's Settings (new_share, seed, per_species, rerank_oof_queries)."""
    features = load_record_features(manifest, emb.index)
    match = replace(MatchSettings(), sift=features.sift)
    sample = sample_queries(emb, settings.rerank_oof_queries, settings.seed)
    evidence = oof_evidence(emb, features.train, match, progress, sample)
    if evidence is None:
        raise PredictError("--rerank local calibrates on out-of-fold pairs: the runs need fold{k} models")
    variants, fused, calibrations = calibrate_and_tune(evidence, settings.new_share, settings.seed,
                                                       settings.per_species)  # fmt: skip
    sha256 = save_feature_set(files.join(out_dir, FEATURES_NAME), features.train)
    local = LocalRerank(
        features_file=FEATURES_NAME,
        features_sha256=sha256,
        calibrations=calibrations.to_dict(),
        photos_root=manifest.data.get("sources", {}).get("train_images", {}).get("path", ""),
        **match.sections(),
    )
    path = LocalRerankPath(out_dir, _answering(manifest, local), emb.index.train_names, emb.index.train_ids)
    logger.info("re-ranking %d test queries by local features", len(features.test))
    reranked = path.rerank(test_ranked, features.test)
    section = report_section(local, variants, features, sample)
    return LocalOutcome(local, fused, variants, reranked.ranked, section, path, tuple(features.test),
                        tuple(reranked.evidence), sample)  # fmt: skip


def _answering(manifest: Manifest, local: LocalRerank) -> GalleryManifest:
    """The part of gallery.json the query path's local re-rank reads (its local section and the crop)."""
    return GalleryManifest(
        runs=(), flip_tta=False, options={}, threshold=ThresholdPolicy(0.0), image=manifest.image_settings,
        records_root=manifest.root, records_manifest_sha256=manifest.sha256, embeddings_file="",
        embeddings_sha256="", rerank="local", local=local,
    )  # fmt: skip


def every_individual(index: RecordsIndex) -> int:
    return len(set(index.train_ids))
