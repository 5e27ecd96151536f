"""Trainer: gradient accumulation over micro-batches inside one train_step (safe under tf.distribute)."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras.src import tree
from keras.src.losses import loss as loss_module
from keras.src.trainers.data_adapters import data_adapter_utils


@keras.saving.register_keras_serializable(package="tfwhale")
class AccumulatingModel(keras.Model):
    """A functional model whose train_step splits each batch into `accumulate_steps` micro-batches.

    Keras' own `gradient_accumulation_steps` applies the optimizer inside a conditional,
    which fails under MirroredStrategy/TPUStrategy (DESIGN.md). Here the input pipeline
    delivers accumulate_steps x micro-batch examples per step; gradients of the micro-batches
    are summed in a loop and applied once, unconditionally, so one step equals one step of the
    full batch while the activations held at a time are those of one micro-batch.
    TF backend only; on JAX the optimizer's own accumulation is used (no strategy there).
    """

    def __init__(self, *args, accumulate_steps: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if accumulate_steps < 1:
            raise ValueError(f"accumulate_steps must be >= 1, got {accumulate_steps}")
        self.accumulate_steps = int(accumulate_steps)

    def get_config(self) -> dict:
        return {**super().get_config(), "accumulate_steps": self.accumulate_steps}

    def train_step(self, data):
        if self.accumulate_steps == 1:
            return super().train_step(data)
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        micro = [_split(part, self.accumulate_steps) for part in (x, y, sample_weight)]
        weights = self.trainable_weights
        summed = [tf.zeros_like(w) for w in weights]
        predictions = []
        for i in range(self.accumulate_steps):
            mx, my, msw = (None if parts is None else parts[i] for parts in micro)
            grads, y_pred = self._micro_step(mx, my, msw, weights)
            predictions.append(y_pred)
            summed = [s + (g if g is not None else 0.0) for s, g in zip(summed, grads, strict=True)]
        mean = [s / self.accumulate_steps for s in summed]
        self.optimizer.apply_gradients(zip(mean, weights, strict=True))
        y_pred = tree.map_structure(lambda *parts: tf.concat(parts, axis=0), *predictions)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _micro_step(self, x, y, sample_weight, weights):
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            batch = tf.shape(next(t for t in tree.flatten(x) if t is not None))[0]
            self._loss_tracker.update_state(
                loss_module.unscale_loss_for_distribution(loss), sample_weight=batch
            )
            loss = self.optimizer.scale_loss(loss)
        return tape.gradient(loss, weights), y_pred


def _split(structure, n: int):
    """A nested structure of batch tensors -> n structures of micro-batches (static equal sizes)."""
    if structure is None:
        return None
    leaves = [tf.split(t, n, axis=0) for t in tree.flatten(structure)]
    return [tree.pack_sequence_as(structure, [parts[i] for parts in leaves]) for i in range(n)]


def with_accumulation(model: keras.Model, accumulate_steps: int) -> keras.Model:
    """The same layers and weights, training with accumulation when accumulate_steps > 1 (TF backend)."""
    if accumulate_steps <= 1 or keras.backend.backend() != "tensorflow":
        return model
    return AccumulatingModel(
        inputs=model.input, outputs=model.output, accumulate_steps=accumulate_steps, name=model.name
    )
