"""Trainer: out-of-fold validation as the leaderboard scores it (kNN MAP@5 with new_individual)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfwhale.contracts.records import Manifest
from tfwhale.core.config import PredictConfig
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.core.metrics import map_at_k
from tfwhale.feed.data import embed
from tfwhale.retrieval import threshold
from tfwhale.retrieval.scoring import rank_out_of_fold, simulate_new


def score_queries(
    query_emb: np.ndarray,
    query_ids: list[str],
    gallery_emb: np.ndarray,
    gallery_ids: list[str],
    new_share: float = PredictConfig.new_share,
    seed: int = 0,
) -> dict[str, Any]:
    """MAP@5 of queries against a gallery, with the new_individual threshold tuned on these queries after
    the same leave-individual-out simulation as predict's (so both logs' MAP@5 mean the same)."""
    ranked, truths = rank_out_of_fold(query_emb, query_ids, gallery_emb, gallery_ids)
    scored = simulate_new(ranked, truths, new_share, seed)
    tuned = threshold.tune_threshold(
        scored.ranked.labels, scored.ranked.scores, scored.truths, n_simulated=int(scored.simulated.sum())
    )
    return {
        "val_map5": float(tuned.best_map),
        "val_threshold": float(tuned.threshold),
        "val_map5_without_new": float(map_at_k(scored.truths, scored.ranked.labels)),
        "val_new_share": float(np.mean([t == NEW_INDIVIDUAL for t in scored.truths])),
    }


def validate_fold(
    embedding_model: keras.Model,
    manifest: Manifest,
    val_fold: int,
    batch: int,
    new_share: float = PredictConfig.new_share,
    seed: int = 0,
    runtime: Any = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, out-of-fold embeddings of the val fold) for one fold's current weights.

    With several training processes (runtime), each embeds its share and every process gets all rows."""
    train_folds = [f for f in range(manifest.n_folds) if f != val_fold]
    if runtime is not None and runtime.num_processes > 1:
        from tfwhale.training.shared_embed import embed_across

        local_batch = batch * max(1, runtime.replicas // runtime.num_processes)
        gallery = embed_across(embedding_model, manifest, "train", train_folds, local_batch, runtime)
        queries = embed_across(embedding_model, manifest, "train", [val_fold], local_batch, runtime)
    else:
        gallery = embed(embedding_model, manifest, "train", train_folds, batch)
        queries = embed(embedding_model, manifest, "train", [val_fold], batch)
    metrics = score_queries(queries.embeddings, queries.ids, gallery.embeddings, gallery.ids, new_share, seed)
    oof = {
        "embeddings": queries.embeddings,
        "image_names": np.asarray(queries.names),
        "individual_ids": np.asarray(queries.ids),
        "species": np.asarray(queries.species),
    }
    return metrics, oof
