"""Train stage: the PK sampler, P individuals x K photos per replica batch (for triplet heads)."""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from tfwhale.core.config import Config, ConfigError
from tfwhale.feed.shards import TRAIN_CYCLE, read_records, training_fields

logger = logging.getLogger(__name__)

PK_STREAM = 0  # this sampler's random stream under the training seed (data.py uses 1 and 2)


def _load_sorted_by_label(paths: list[str]) -> dict[str, np.ndarray]:
    """All (encoded) training examples of the shards in memory, sorted by label."""
    columns: dict[str, list[np.ndarray]] = {"image": [], "label": [], "species_label": []}
    batches = read_records(paths, TRAIN_CYCLE).map(training_fields, num_parallel_calls=tf.data.AUTOTUNE)
    for batch in batches.batch(1024).as_numpy_iterator():
        for key, values in batch.items():
            columns[key].append(values)
    table = {key: np.concatenate(parts) for key, parts in columns.items()}
    order = np.argsort(table["label"], kind="stable")
    return {key: values[order] for key, values in table.items()}


def pk_examples(paths: list[str], cfg: Config, seed: int) -> tf.data.Dataset:
    """Forever: groups of P distinct individuals x K photos each, one group per replica batch.

    The encoded examples of the folds are held in host memory (about the shards' size) so any
    individual's photos can be drawn; individuals with fewer than K photos repeat some (each copy
    gets its own augmentation). Only individuals with >= data.pk_min_photos photos are drawn.
    """
    ids, photos = cfg.data.ids_per_batch, cfg.data.photos_per_id
    table = _load_sorted_by_label(paths)
    _, starts, counts = np.unique(table["label"], return_index=True, return_counts=True)
    eligible = counts >= cfg.data.pk_min_photos
    if eligible.sum() < ids:
        raise ConfigError(
            f"PK sampler: {int(eligible.sum())} individuals in these folds have at least "
            f"data.pk_min_photos={cfg.data.pk_min_photos} photos; data.ids_per_batch={ids} needs {ids}"
        )
    starts_t = tf.constant(starts[eligible], tf.int64)
    counts_t = tf.constant(counts[eligible], tf.int64)
    max_count = int(counts[eligible].max())
    columns = {key: tf.constant(values) for key, values in table.items()}
    logger.info(
        "PK sampler: %d examples in memory, %d individuals drawable", len(table["label"]), eligible.sum()
    )

    def group_indices(step: tf.Tensor) -> tf.Tensor:
        group_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, PK_STREAM], tf.int64), step)
        seeds = tf.random.experimental.stateless_split(group_seed, 2)
        chosen = tf.argsort(tf.random.stateless_uniform([len(starts_t)], seeds[0]))[:ids]
        start, count = tf.gather(starts_t, chosen), tf.gather(counts_t, chosen)
        # a random order of each chosen individual's photos: positions past its count sort last
        keys = tf.random.stateless_uniform([ids, max_count], seeds[1])
        keys = tf.where(tf.range(max_count, dtype=tf.int64)[None] < count[:, None], keys, 2.0)
        shuffled = tf.argsort(keys, axis=1)
        slots = tf.range(photos, dtype=tf.int64)[None] % count[:, None]
        within = tf.gather(shuffled, slots, batch_dims=1)
        return tf.reshape(start[:, None] + tf.cast(within, tf.int64), [-1])

    indices = tf.data.Dataset.counter().map(group_indices).unbatch()
    return indices.map(lambda i: {key: tf.gather(values, i) for key, values in columns.items()})
