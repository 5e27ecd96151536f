"""Train and predict stages: fold shards read into parsed training fields (shared by both samplers)."""

from __future__ import annotations

import tensorflow as tf

from tfwhale.contracts import records

READ_BUFFER = 8 << 20  # bytes per open shard; large reads matter on gs://
TRAIN_CYCLE = 16


def read_records(paths: list[str], cycle: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    files = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle_seed is not None:
        files = files.shuffle(len(paths), seed=shuffle_seed)
    return files.interleave(
        lambda path: tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER),
        cycle_length=min(len(paths), cycle),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def training_fields(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    example = records.parse_train_example(serialized)
    return {k: example[k] for k in ("image", "label", "species_label")}
