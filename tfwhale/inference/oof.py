"""Stage 3 (predict): out-of-fold predictions, to tune the new_individual threshold and measure options.

Fold k's model embeds fold k's records (the queries) and the other folds' (their gallery), exactly as
the trainer validated (both through retrieval.scoring); an individual absent from the other folds counts
as new_individual there. Test queries are ranked by the same retrieval.ranking.rank.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from tfwhale.contracts.gallery_arrays import FoldCentres
from tfwhale.contracts.gallery_manifest import ThresholdPolicy
from tfwhale.contracts.run_folder import RunError, fold_dir_name
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.core.metrics import map_at_k
from tfwhale.inference.gallery import FoldEmbeddings, PredictEmbeddings
from tfwhale.query.answers import answer_labels
from tfwhale.query.combine import concat_runs
from tfwhale.query.heads import class_heads
from tfwhale.retrieval.ranking import ClassHeads, Ranked, RankOptions
from tfwhale.retrieval.scoring import rank_out_of_fold, simulate_new
from tfwhale.retrieval.threshold import ThresholdResult, tune_threshold

logger = logging.getLogger(__name__)


def heads_of(
    query_embeddings, folds: Sequence[FoldEmbeddings], emb: PredictEmbeddings, class_names: Sequence[str]
) -> ClassHeads:
    """The fold models' ArcFace heads on queries embedded by each (the --blend's class cosines)."""
    centres = []
    for fold in folds:
        if fold.centres is None:
            raise RunError(f"{fold.model.path}: no class centres loaded; the blend needs them")
        centres.append(FoldCentres(0, fold.model.name, fold.centres, fold.subcenters))
    index, val_folds = emb.index, [f.model.val_fold for f in folds]
    return class_heads(query_embeddings, centres, val_folds, class_names, index.train_ids, index.train_folds)


@dataclass(frozen=True)
class OOFPredictions:
    ranked: Ranked
    truths: list[str]  # individual_id, or new_individual when absent from the query's gallery
    species: list[str]
    names: list[str]
    val_folds: list[int]  # per query
    simulated: np.ndarray  # bool per query: made new by leaving its individual out (scoring.simulate_new)


def oof_folds(emb: PredictEmbeddings) -> list[int]:
    """Validation folds every run has a fold model for (only those give out-of-fold queries)."""
    per_run = [{f.model.val_fold for f in r.folds if f.model.val_fold is not None} for r in emb.runs]
    return sorted(set.intersection(*per_run)) if per_run else []


def oof_predictions(
    emb: PredictEmbeddings,
    options: RankOptions,
    class_names: Sequence[str] | None = None,
    new_share: float = 0.0,
    seed: int = 0,
) -> OOFPredictions | None:
    """Fold k's queries ranked against fold k's gallery with fold k's models, for every common k; then
    about `new_share` of all queries made new by leaving their individual out (seeded)."""
    index = emb.index
    labels, scores, truths, species, names, val_folds = [], [], [], [], [], []
    for k in oof_folds(emb):
        folds = [r.fold(fold_dir_name(k)) for r in emb.runs]
        combined = concat_runs([f.train for f in folds], emb.weights)
        is_query = index.train_folds == k
        if is_query.all() or not is_query.any():
            continue
        gallery_ids = np.asarray(index.train_ids)[~is_query]
        heads = None
        if options.blend:
            heads = heads_of([f.train[is_query] for f in folds], folds, emb, class_names)
        query_ids = [i for i, q in zip(index.train_ids, is_query, strict=True) if q]
        ranked, fold_truths = rank_out_of_fold(
            combined[is_query], query_ids, combined[~is_query], gallery_ids.tolist(), options, heads
        )
        labels += ranked.labels
        scores += ranked.scores
        truths += fold_truths
        species += [s for s, q in zip(index.train_species, is_query, strict=True) if q]
        names += [n for n, q in zip(index.train_names, is_query, strict=True) if q]
        val_folds += [k] * len(query_ids)
    if not truths:
        return None
    scored = simulate_new(Ranked(labels, scores), truths, new_share, seed)
    return OOFPredictions(scored.ranked, scored.truths, species, names, val_folds, scored.simulated)


def tune(oof: OOFPredictions, per_species: bool) -> ThresholdResult:
    """The threshold maximising OOF MAP@5, every query weighing the same (the simulation set the mix)."""
    return tune_threshold(
        oof.ranked.labels, oof.ranked.scores, oof.truths,
        species=oof.species, per_species=per_species, n_simulated=int(oof.simulated.sum()),
    )  # fmt: skip


def variants_to_measure(chosen: RankOptions) -> list[RankOptions]:
    """Plain kNN and each option of `chosen` alone: what `chosen` is compared with on OOF."""
    base = RankOptions(k=chosen.k, backend=chosen.backend)
    variants = [base]
    for change in (
        {"whiten": chosen.whiten},
        {"dba": chosen.dba},
        {"qe": chosen.qe},
        {"blend": chosen.blend},
    ):
        single = replace(base, **change)
        if single not in variants and single != chosen:
            variants.append(single)
    return [v for v in variants if v != chosen]


def measure(
    emb: PredictEmbeddings,
    options: RankOptions,
    class_names: Sequence[str] | None,
    new_share: float,
    seed: int,
    fixed_threshold: float | None,
) -> dict | None:
    """OOF MAP@5 of one ranking variant at the threshold it would be used with: its own OOF-tuned one, or
    the fixed one the user gave."""
    oof = oof_predictions(emb, options, class_names, new_share, seed)
    if oof is None:
        return None
    tuned = tune(oof, per_species=False)
    if fixed_threshold is None:
        return variant_summary(options, tuned.threshold, tuned.best_map, tuned.new_rate)
    answers = answer_labels(oof.ranked, ThresholdPolicy(fixed_threshold), {})
    return variant_summary(options, fixed_threshold, map_at_k(oof.truths, answers), _new_first(answers))


def _new_first(answers: Sequence[Sequence[str]]) -> float:
    return float(np.mean([bool(a) and a[0] == NEW_INDIVIDUAL for a in answers])) if answers else 0.0


def variant_summary(options: RankOptions, threshold: float, map5: float, new_rate: float) -> dict:
    logger.info("OOF %s: MAP@5 %.4f at threshold %.4f", options.name, map5, threshold)
    return {
        "name": options.name,
        "map5": round(float(map5), 6),
        "threshold": float(threshold),
        "new_rate": round(float(new_rate), 6),
    }
