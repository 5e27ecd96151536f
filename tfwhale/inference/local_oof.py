"""Stage 3 (predict), --rerank local: the out-of-fold evidence (cosine, inliers, LNBNN votes) of fold k's
photos against the other folds' photos, its cross-fitted isotonic calibrations, and the global, local and
fused rankings of the OOF queries with new individuals simulated and the threshold tuned on each.

Out of fold, exactly as the threshold is tuned today: fold k's photos are queries against the other
folds' photos, their cosines from fold k's models (never a model that saw them), their features matched
against the other folds' features only. The calibrations that score the OOF queries (for the threshold
and report.json) are cross-fitted: fold k's rows are scored by a fit on the other folds' rows, so no
pair is scored by a fit that saw it. gallery.json gets the fit on every OOF pair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from tfwhale.contracts.local_features import FeatureSet
from tfwhale.contracts.run_folder import fold_dir_name
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.inference import oof
from tfwhale.inference.gallery import PredictEmbeddings
from tfwhale.inference.submission import PredictError
from tfwhale.matching.aggregate import per_individual
from tfwhale.matching.fusion import fuse
from tfwhale.matching.rerank import Calibrations, LeaveOneOut, LocalGallery, fit_calibrations, query_evidence
from tfwhale.query.combine import concat_runs
from tfwhale.query.fused import ranking_of
from tfwhale.query.local import MatchSettings, Owners
from tfwhale.retrieval.scoring import simulate_new
from tfwhale.retrieval.threshold import ThresholdResult

logger = logging.getLogger("tfwhale.predict")

VARIANTS = ("global", "local", "fused")


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


@dataclass(frozen=True)
class OOFSample:
    """Which training photos are re-ranked as OOF queries (the calibrations' and threshold's data), and
    out of how many: re-ranking costs ~1 s a query, so at most `cap` (predict.rerank_oof_queries)."""

    keep: np.ndarray  # bool per training row (RecordsIndex order)
    queries: int  # the OOF queries there are: photos of a validation fold that has a gallery
    cap: int | None  # None: every one
    seed: int

    @property
    def reranked(self) -> int:
        return int(self.keep.sum())

    def section(self) -> dict:
        """report.json's rerank.oof_queries."""
        return {"reranked": self.reranked, "of": self.queries, "cap": self.cap, "seed": self.seed}


def sample_rows(folds: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """Bool mask over `folds` (each candidate's validation fold, -1: no candidate): every candidate when
    `cap` is None or covers them, else `cap` of them drawn without replacement, each fold giving its
    share (largest remainder), so every fold keeps rows for the cross-fitting. Whole queries are drawn,
    never pairs: a drawn query keeps its evidence against every individual, as the simulation of new
    individuals needs. Same seed, same sample."""
    candidates = folds >= 0
    total = int(candidates.sum())
    if cap is None or cap >= total:
        return candidates
    ks, counts = np.unique(folds[candidates], return_counts=True)
    exact = cap * counts / total
    quota = np.floor(exact).astype(int)
    quota[np.argsort(-(exact - quota), kind="stable")[: cap - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(folds), bool)
    for k, n in zip(ks, quota, strict=True):
        keep[rng.choice(np.flatnonzero(folds == k), size=n, replace=False)] = True
    return keep


def sample_queries(emb: PredictEmbeddings, cap: int | None, seed: int) -> OOFSample:
    """The OOF queries --rerank local re-ranks: fold k's photos for every validation fold k whose other
    folds hold a gallery, sampled down to `cap` (sample_rows)."""
    folds = np.full(len(emb.index.train_folds), -1)
    for k in oof.oof_folds(emb):
        is_query = emb.index.train_folds == k
        if is_query.any() and not is_query.all():
            folds[is_query] = k
    keep = sample_rows(folds, cap, seed)
    sample = OOFSample(keep, int(np.sum(folds >= 0)), cap, seed)
    if sample.reranked < sample.queries:
        logger.info("--rerank local: calibrating on %d of %d OOF queries (a sample, seed %d; "
                    "predict.rerank_oof_queries=%d)", sample.reranked, sample.queries, seed, cap)  # fmt: skip
    return sample


def oof_evidence(
    emb: PredictEmbeddings,
    features: FeatureSet,
    settings: MatchSettings,
    progress: bool = True,
    sample: OOFSample | None = None,
):
    """Fold k's photos (those in `sample`; default every one) against the other folds' photos, for every
    validation fold k (OOFEvidence; None when there is no OOF query)."""
    index = emb.index
    sample = sample_queries(emb, None, 0) if sample is None else sample
    owners = Owners.of(index.train_ids)
    individuals, codes = owners.individuals, owners.codes
    parts: list[tuple] = []
    with tqdm(total=sample.reranked, desc="local features, out of fold", unit="photo",
              disable=not progress) as bar:  # fmt: skip
        for k in oof.oof_folds(emb):
            is_fold = index.train_folds == k
            if not (is_fold & sample.keep).any():
                continue
            combined = concat_runs([r.fold(fold_dir_name(k)).train for r in emb.runs], emb.weights)
            queries, others = np.flatnonzero(is_fold & sample.keep), np.flatnonzero(~is_fold)
            found = _fold_evidence(combined, queries, others, codes, individuals, features, settings, bar)
            parts.append(found)
    if not parts:
        return None
    query_rows = np.concatenate([p[0] for p in parts])
    stacked = [np.concatenate([p[i] for p in parts]) for i in range(1, 5)]
    loo = LeaveOneOut(*stacked[:3], codes[query_rows], stacked[3])
    return OOFEvidence(
        loo, individuals, [index.train_names[i] for i in query_rows],
        [index.train_species[i] for i in query_rows], index.train_folds[query_rows],
    )  # fmt: skip


def _fold_evidence(combined, queries, others, codes, individuals, features, settings: MatchSettings, bar):
    """Fold k's query photos (rows `queries`) against its gallery (every photo of the other folds)."""
    n_individuals = len(individuals)
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


def calibrate_and_tune(evidence: OOFEvidence, new_share: float, seed: int, per_species: bool):
    """(every variant's OOF summary, the fused Variant, the calibrations for gallery.json)."""
    _check_both_kinds(evidence.loo)
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


def _check_both_kinds(loo: LeaveOneOut) -> None:
    """PredictError unless the OOF pairs hold both a same-individual and a different-individual pair: the
    calibrations need both (a small --rerank-oof-queries sample of new individuals' photos has no same)."""
    same = (np.arange(loo.cosine.shape[1])[None, :] == loo.own[:, None])[loo.scored]
    if not same.any() or same.all():
        raise PredictError(
            f"--rerank local: the {len(loo.own)} OOF queries re-ranked give no "
            f"{'same' if not same.any() else 'different'}-individual pair to calibrate on; re-rank more "
            "of them (--rerank-oof-queries N, or all)"
        )
