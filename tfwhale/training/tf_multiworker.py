"""Trainer: Keras 3's TF trainer made to run under MultiWorkerMirroredStrategy (two reductions it gets wrong).

Keras 3.15 (measured here, TF 2.21) fails in `fit` under MultiWorkerMirroredStrategy before the first step:
it reduces the whole nested first batch in one `strategy.reduce` call (only single values reduce across
workers; the build needs only its shapes), then averages each scalar loss/metric across workers with
`axis=0` (a scalar has no axis 0).
Both are replaced, process-wide and only when a multi-worker runtime is created: the build takes one local
replica's batch, and scalars are averaged over the replicas (`axis=None`), so the logged losses are the
mean over all workers.
"""

from __future__ import annotations

import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

_PATCHED = False


def patch_keras_reductions() -> None:
    global _PATCHED
    if _PATCHED:
        return
    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and _is_multi_worker(strategy):
            return tree.map_structure(lambda v: _mean_over_replicas(v, strategy), values)
        return original_reduce(values, strategy, reduction)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, batches in iterator:
                first = next(batches)
                data_batch = tree.map_structure(lambda v: _first_local(v, self.distribute_strategy), first)
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    _PATCHED = True


def _is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _first_local(value, strategy):
    """One local replica's part: the build needs shapes only (and uint8 images do not all-reduce)."""
    if not isinstance(value, tf.distribute.DistributedValues):
        return value
    return strategy.experimental_local_results(value)[0]


def _mean_over_replicas(value, strategy):
    if not isinstance(value, tf.distribute.DistributedValues):
        return value
    return strategy.reduce("MEAN", value, axis=None)
