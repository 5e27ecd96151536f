"""Trainer: validation embeddings over several training processes; each example embedded once, gathered."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from tfwhale.contracts.records import Manifest, ManifestError
from tfwhale.feed.data import Embedded, eval_dataset, eval_metadata
from tfwhale.training.cluster import gather_rows


def embed_across(
    model: Any, manifest: Manifest, split: str, folds: list[int], batch: int, runtime: Any
) -> Embedded:
    """What feed.data.embed returns, computed by every process together: each embeds its share of the rows
    (index, index + n, ...) on its own devices; the shares are gathered and put back in eval order."""
    meta = eval_metadata(manifest, split, folds)
    count = manifest.count(split, folds)
    if len(meta["image_name"]) != count:
        raise ManifestError(f"{manifest.root}: manifest counts {count} {split} examples in folds {folds}")
    share = (runtime.process_id, runtime.num_processes)
    dataset, _ = eval_dataset(manifest, split, folds, batch, share)
    predict = _jax_predictor(model) if runtime.backend == "jax" else _tf_predictor(model)
    own = np.concatenate([predict(rows["image"]) for rows in dataset.as_numpy_iterator()])
    gathered = gather_rows(own, runtime)  # [processes x own rows, D], process by process
    # row j of process p is example p + processes * j: interleave the processes back
    ordered = (
        gathered.reshape(runtime.num_processes, len(own), -1).transpose(1, 0, 2).reshape(len(gathered), -1)
    )
    embeddings = ordered[:count]
    if split == "test":
        return Embedded(embeddings, meta["image_name"], None, None)
    return Embedded(embeddings, meta["image_name"], meta["individual_id"], meta["species"])


def _embedding_of(output: Any) -> Any:
    return output["embedding"] if isinstance(output, dict) else output


def _tf_predictor(model: Any):
    """This worker's batches on its own device: inference needs no collective (the weights are mirrored)."""

    @tf.function(reduce_retracing=True)
    def forward(images):
        return _embedding_of(model(images, training=False))

    return lambda images: forward(tf.constant(images)).numpy()


def _jax_predictor(model: Any):
    """One program over every device of every process: each process feeds its rows, keeps its outputs."""
    import jax
    import keras

    distribution = keras.distribution.distribution()
    mesh = distribution.device_mesh.backend_mesh
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(distribution.batch_dim_name))
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def call(trainable, non_trainable, images):
        output, _ = model.stateless_call(trainable, non_trainable, images, training=False)
        return _embedding_of(output)

    forward = jax.jit(call, out_shardings=rows)  # outputs stay with the process whose rows they embed

    def predict(images: np.ndarray) -> np.ndarray:
        global_images = jax.make_array_from_process_local_data(rows, images)
        output = forward(trainable, non_trainable, global_images)
        shards = sorted(output.addressable_shards, key=lambda s: s.index[0].start or 0)
        return np.concatenate([np.asarray(s.data) for s in shards])

    return predict
