"""Train and predict stages: fold shards read into parsed training fields (shared by both samplers)."""

from __future__ import annotations

import tensorflow as tf

from tfwhale.contracts import records

READ_BUFFER = 8 << 20  # bytes per open shard; large reads matter on gs://
TRAIN_CYCLE = 16

Share = tuple[int, int]  # (this process's index, number of training processes)
ONE_PROCESS: Share = (0, 1)


def share_of(paths: list[str], share: Share) -> tuple[list[str], Share | None]:
    """(shard files, row share) one training process reads: every count-th file from its own index, so the
    processes read disjoint parts that cover every shard; with fewer files than processes each reads all
    files and keeps every count-th row (the returned row share, for Dataset.shard)."""
    index, count = share
    if count == 1:
        return paths, None
    if len(paths) >= count:
        return paths[index::count], None
    return paths, share


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
