"""Stage 3 (predict), --rerank local: the records' local features, P(same individual) of the cosine, the
inliers and the LNBNN votes by isotonic calibrations fitted on out-of-fold pairs, the new_individual
threshold on their mean (the fused P), and the test queries re-ranked by the query path's own
LocalRerankPath, which identify and serve answer with from gallery.json.

Out of fold, exactly as the threshold is tuned today: fold k's photos are queries against the other
folds' photos, their cosines from fold k's models (never a model that saw them), their features matched
against the other folds' features only. The calibrations that score the OOF queries (for the threshold
and report.json) are cross-fitted: fold k's rows are scored by a fit on the other folds' rows, so no
pair is scored by a fit that saw it. gallery.json gets the fit on every OOF pair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from tfwhale.contracts.gallery_manifest import GalleryManifest, LocalRerank, ThresholdPolicy
from tfwhale.contracts.local_features import (
    FeatureSet,
    LocalFeatures,
    LocalFeaturesError,
    load_feature_set,
    save_feature_set,
)
from tfwhale.contracts.records import Manifest, ManifestError
from tfwhale.contracts.run_folder import fold_dir_name
from tfwhale.core import files
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.inference import oof
from tfwhale.inference.gallery import PredictEmbeddings, RecordsIndex
from tfwhale.inference.submission import PredictError
from tfwhale.matching.aggregate import per_individual
from tfwhale.matching.features import SiftSettings
from tfwhale.matching.fusion import fuse
from tfwhale.matching.rerank import (
    Calibrations,
    Evidence,
    LeaveOneOut,
    LocalGallery,
    fit_calibrations,
    query_evidence,
)
from tfwhale.query.combine import concat_runs
from tfwhale.query.fused import ranking_of
from tfwhale.query.local import LocalRerankPath, MatchSettings
from tfwhale.retrieval.ranking import Ranked
from tfwhale.retrieval.scoring import simulate_new
from tfwhale.retrieval.threshold import ThresholdResult

logger = logging.getLogger("tfwhale.predict")

FEATURES_NAME = "local_features.npz"  # in predict's output folder: the gallery's features, in its order
VARIANTS = ("global", "local", "fused")


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
class OOFEvidence:
    """Every OOF query's raw evidence (LeaveOneOut rows: own = its individual's code, scored = the
    individual has photos in its fold's gallery) and where it came from."""

    loo: LeaveOneOut
    individuals: np.ndarray  # sorted individual ids: the evidence columns
    names: list[str]
    species: list[str]
    val_folds: np.ndarray


def _subset(features: FeatureSet, rows: np.ndarray) -> FeatureSet:
    return FeatureSet.from_photos([features.names[i] for i in rows], [features[int(i)] for i in rows])


def oof_evidence(
    emb: PredictEmbeddings, features: FeatureSet, settings: MatchSettings, progress: bool = True
):
    """Fold k's photos against the other folds' photos, for every validation fold k (OOFEvidence; None
    when there is no OOF fold)."""
    index = emb.index
    individuals = np.asarray(sorted(set(index.train_ids)))
    codes = np.searchsorted(individuals, np.asarray(index.train_ids))
    parts: list[tuple] = []
    n_queries = sum(int(np.sum(index.train_folds == k)) for k in oof.oof_folds(emb))
    with tqdm(total=n_queries, desc="local features, out of fold", unit="photo", disable=not progress) as bar:
        for k in oof.oof_folds(emb):
            is_query = index.train_folds == k
            if is_query.all() or not is_query.any():
                continue
            combined = concat_runs([r.fold(fold_dir_name(k)).train for r in emb.runs], emb.weights)
            parts.append(_fold_evidence(combined, is_query, codes, len(individuals), features, settings, bar))
    if not parts:
        return None
    query_rows = np.concatenate([p[0] for p in parts])
    stacked = [np.concatenate([p[i] for p in parts]) for i in range(1, 5)]
    loo = LeaveOneOut(*stacked[:3], codes[query_rows], stacked[3])
    return OOFEvidence(
        loo, individuals, [index.train_names[i] for i in query_rows],
        [index.train_species[i] for i in query_rows], index.train_folds[query_rows],
    )  # fmt: skip


def _fold_evidence(combined, is_query, codes, n_individuals, features, settings: MatchSettings, bar):
    queries, others = np.flatnonzero(is_query), np.flatnonzero(~is_query)
    gallery = LocalGallery(_subset(features, others), codes[others], n_individuals)
    cosine = per_individual(combined[queries] @ combined[others].T, codes[others], n_individuals, "max")
    scored = np.tile(np.bincount(codes[others], minlength=n_individuals) > 0, (len(queries), 1))
    cosine[~scored] = -1.0  # no photo in this fold's gallery: the lowest cosine (per_individual wrote 0)
    inliers, votes = np.zeros_like(cosine), np.zeros_like(cosine)
    for row, photo in enumerate(queries):
        found = query_evidence(features[int(photo)], cosine[row], gallery, settings.rerank, settings.pairs)
        inliers[row], votes[row] = found.inliers, found.votes
        bar.update(1)
    return queries, cosine, inliers, votes, scored


def _rows(loo: LeaveOneOut, keep: np.ndarray) -> LeaveOneOut:
    return LeaveOneOut(loo.cosine[keep], loo.inliers[keep], loo.votes[keep], loo.own[keep], loo.scored[keep])


def cross_fitted(evidence: OOFEvidence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(same) of the cosine, inliers and votes of every OOF row, each fold's rows by a fit on the other
    folds' rows. With one validation fold (runs of fold 0 only) the rows are split in two by individual
    instead, so that still no row is scored by a fit that saw it. A part whose others give no pair of
    both kinds is scored by the fit on all rows."""
    loo = evidence.loo
    groups = evidence.val_folds if len(np.unique(evidence.val_folds)) > 1 else loo.own % 2
    every = fit_calibrations(loo)
    probabilities = [np.zeros_like(loo.cosine) for _ in range(3)]
    for group in np.unique(groups):
        mine = groups == group
        try:
            fitted = fit_calibrations(_rows(loo, ~mine)) if (~mine).any() else every
        except ValueError:
            fitted = every
        for out, calibration, raw in zip(probabilities, _parts(fitted), (loo.cosine, loo.inliers, loo.votes),
                                         strict=True):  # fmt: skip
            out[mine] = calibration(raw[mine])
    return probabilities[0], probabilities[1], probabilities[2]


def _parts(calibrations: Calibrations):
    return calibrations.cosine, calibrations.inliers, calibrations.votes


@dataclass(frozen=True)
class Variant:
    """One ranking of the OOF queries with new individuals simulated, and its tuned threshold."""

    predictions: oof.OOFPredictions
    tuned: ThresholdResult

    def summary(self) -> dict:
        truths, labels = self.predictions.truths, self.predictions.ranked.labels
        known = [i for i, t in enumerate(truths) if t != NEW_INDIVIDUAL]
        top1 = (
            float(np.mean([bool(labels[i]) and labels[i][0] == truths[i] for i in known])) if known else None
        )
        auc = self.tuned.separation_auc
        return {
            "map5": round(float(self.tuned.best_map), 6),
            "threshold": round(float(self.tuned.threshold), 6),
            "known_top1": None if top1 is None else round(top1, 6),
            "known_new_auc": None if auc is None else round(float(auc), 6),
            "queries": len(truths),
        }


def tune_variant(evidence: OOFEvidence, score: np.ndarray, new_share: float, seed: int, per_species: bool):
    """Rank the OOF queries by `score`, make new_share of them new, tune the threshold (oof.tune)."""
    loo = evidence.loo
    ranked = ranking_of(score, loo.cosine, loo.scored, evidence.individuals)
    own = evidence.individuals[loo.own]
    truths = [i if loo.scored[r, loo.own[r]] else NEW_INDIVIDUAL for r, i in enumerate(own.tolist())]
    simulated = simulate_new(ranked, truths, new_share, seed)
    predictions = oof.OOFPredictions(
        simulated.ranked, simulated.truths, evidence.species, evidence.names,
        evidence.val_folds.tolist(), simulated.simulated,
    )  # fmt: skip
    return Variant(predictions, oof.tune(predictions, per_species))


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


def report_section(local: LocalRerank, variants: dict[str, dict], features: RecordFeatures) -> dict:
    n = len(features.train) + len(features.test)
    keypoints = len(features.train.descriptors) + sum(len(f) for f in features.test)
    return {
        "mode": "local",
        "oof": variants,
        "calibration": "isotonic P(same individual) of the cosine, the inliers and the LNBNN votes, "
        "cross-fitted over the validation folds; local = mean of P(inliers) and P(votes); fused = mean "
        "of all three, which ranks and which the threshold is on",
        "settings": {"sift": local.sift, "pairs": local.pairs, "rerank": local.rerank},
        "keypoints_per_photo": round(keypoints / n, 1) if n else 0.0,
        "features_file": local.features_file,
    }


def calibrate_and_tune(evidence: OOFEvidence, new_share: float, seed: int, per_species: bool):
    """(every variant's OOF summary, the fused Variant, the calibrations for gallery.json)."""
    p_cosine, p_inliers, p_votes = cross_fitted(evidence)
    scores = {
        "global": evidence.loo.cosine,
        "local": fuse(p_inliers, p_votes),
        "fused": fuse(p_cosine, p_inliers, p_votes),
    }
    variants = {name: tune_variant(evidence, scores[name], new_share, seed, per_species) for name in VARIANTS}
    for name, variant in variants.items():
        logger.info("OOF %s: MAP@5 %.4f, known/new AUC %s", name, variant.tuned.best_map,
                    variant.tuned.separation_auc)  # fmt: skip
    summaries = {name: variant.summary() for name, variant in variants.items()}
    return summaries, variants["fused"], fit_calibrations(evidence.loo)


def rerank_local(
    out_dir: str,
    manifest: Manifest,
    emb: PredictEmbeddings,
    test_ranked: Ranked,
    settings,
    progress: bool = True,
) -> LocalOutcome:
    """The whole --rerank local pass. test_ranked: the embedding's ranking of every individual per test
    query. settings: predict's Settings (new_share, seed, per_species)."""
    features = load_record_features(manifest, emb.index)
    match = replace(MatchSettings(), sift=features.sift)
    evidence = oof_evidence(emb, features.train, match, progress)
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
    section = report_section(local, variants, features)
    return LocalOutcome(local, fused, variants, reranked.ranked, section, path, tuple(features.test),
                        tuple(reranked.evidence))  # fmt: skip


def _answering(manifest: Manifest, local: LocalRerank) -> GalleryManifest:
    """The part of gallery.json the query path's local re-rank reads (its local section and the crop)."""
    return GalleryManifest(
        runs=(), flip_tta=False, options={}, threshold=ThresholdPolicy(0.0), image=manifest.image_settings,
        records_root=manifest.root, records_manifest_sha256=manifest.sha256, embeddings_file="",
        embeddings_sha256="", rerank="local", local=local,
    )  # fmt: skip


def every_individual(index: RecordsIndex) -> int:
    return len(set(index.train_ids))
