"""Trainer: the optimizer, with what fine-tuning a pretrained backbone needs on top of training from scratch.

- train.backbone_lr_multiplier: the backbone's variables step at this fraction of the learning rate (the
  schedule's warmup + cosine/ramp included), the fresh neck and heads at the full rate. Adam's update does
  not scale with the gradient, so the multiplier scales the step, per variable, inside the optimizer.
- train.frozen_epochs: the multiplier is 0 for the first epochs (backbone weights fixed while the head
  finds its feet), then the multiplier. One optimizer and one compile for both phases, so checkpoints,
  resume and the learning-rate curve run on unchanged. The backbone's BatchNorm statistics still follow
  the data in that phase unless train.freeze_bn.
- train.freeze_bn: the backbone's BatchNorm layers run in inference mode (ImageNet statistics, gamma and
  beta fixed): per-replica batches of a few photos give noisy statistics. The neck's BatchNorm trains.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
from keras import ops

from tfwhale.core.config import TrainConfig
from tfwhale.training.schedules import learning_rate_schedule

logger = logging.getLogger(__name__)


def backbone_of(train_model: keras.Model) -> keras.Model:
    """The backbone: the one nested model among the training model's layers (build_models puts it there)."""
    nested = [layer for layer in train_model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"expected one backbone model inside {train_model.name}, found {len(nested)}")
    return nested[0]


def freeze_batch_norm(backbone: keras.Model) -> int:
    """Put the backbone's BatchNorm layers in inference mode for training; returns how many."""
    layers = [layer for layer in _all_layers(backbone) if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.trainable = False  # Keras 3: a non-trainable BatchNorm normalises with its moving statistics
    return len(layers)


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    found = []
    for layer in model.layers:
        found += _all_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return found


class _BackboneRate:
    """Mixin for a Keras optimizer: backbone variables (by position in the variables it is built with)
    step at `backbone_lr_multiplier` x the learning rate, and not at all before `frozen_steps` updates."""

    def __init__(
        self,
        *args,
        backbone_lr_multiplier: float = 1.0,
        frozen_steps: int = 0,
        backbone_indices: list[int] | tuple[int, ...] = (),
        n_variables: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if backbone_lr_multiplier < 0 or frozen_steps < 0:
            raise ValueError("backbone_lr_multiplier and frozen_steps must be >= 0")
        self.backbone_lr_multiplier = float(backbone_lr_multiplier)
        self.frozen_steps = int(frozen_steps)
        self.backbone_indices = [int(i) for i in backbone_indices]
        self.n_variables = n_variables
        self._backbone_set = frozenset(self.backbone_indices)

    def build(self, variables):
        if self.n_variables is not None and len(variables) != self.n_variables:
            raise ValueError(
                f"{type(self).__name__} was set up for {self.n_variables} trainable variables, "
                f"got {len(variables)}: build it with the model it was made for"
            )
        super().build(variables)

    def _factor(self, variable) -> Any:
        """The learning-rate factor of `variable`: 1, or the backbone's (0 while frozen)."""
        if self._get_variable_index(variable) not in self._backbone_set:
            return None
        factor = ops.convert_to_tensor(self.backbone_lr_multiplier, "float32")
        if self.frozen_steps:
            frozen = ops.less(self.iterations, self.frozen_steps)
            factor = ops.where(frozen, ops.zeros_like(factor), factor)
        return factor

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factor(variable)
        if factor is not None:
            learning_rate = ops.cast(learning_rate, "float32") * factor
        return super().update_step(gradient, variable, learning_rate)

    def _apply_weight_decay(self, variables):
        # Keras decays with the unscaled rate; a frozen or slowed backbone must decay alike.
        if self.weight_decay is None:
            return
        for variable in variables:
            if self._use_weight_decay(variable):
                lr = ops.cast(self.learning_rate, variable.dtype)
                factor = self._factor(variable)
                if factor is not None:
                    lr = lr * ops.cast(factor, variable.dtype)
                variable.assign(variable - variable * ops.cast(self.weight_decay, variable.dtype) * lr)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "backbone_lr_multiplier": self.backbone_lr_multiplier,
            "frozen_steps": self.frozen_steps,
            "backbone_indices": self.backbone_indices,
            "n_variables": self.n_variables,
        }


@keras.saving.register_keras_serializable(package="tfwhale")
class FinetuneAdam(_BackboneRate, keras.optimizers.Adam):
    """Adam with a backbone learning-rate multiplier and an optional frozen first phase."""


@keras.saving.register_keras_serializable(package="tfwhale")
class FinetuneAdamW(_BackboneRate, keras.optimizers.AdamW):
    """AdamW with a backbone learning-rate multiplier and an optional frozen first phase."""


def backbone_indices(model: keras.Model, backbone: keras.Model) -> list[int]:
    """Positions of the backbone's trainable variables in `model.trainable_variables` (fit builds with it)."""
    ids = {id(v) for v in backbone.trainable_variables}
    return [i for i, v in enumerate(model.trainable_variables) if id(v) in ids]


def make_optimizer(
    t: TrainConfig, model: keras.Model, backbone: keras.Model, steps_per_epoch: int, global_batch: int,
    backend: str = "tensorflow",
) -> keras.optimizers.Optimizer:  # fmt: skip
    """The optimizer for `model` (the model compiled and fitted; `backbone` inside it).

    steps_per_epoch counts optimizer calls (micro-steps on JAX with accumulation), like the schedule.
    """
    options: dict[str, Any] = {"learning_rate": learning_rate_schedule(t, steps_per_epoch, global_batch)}
    if t.clipnorm:
        options["clipnorm"] = t.clipnorm
    if t.ema_momentum:
        # Keras swaps the averaged weights in when fit ends; FoldMonitor validates and keeps them.
        options.update(use_ema=True, ema_momentum=t.ema_momentum)
    if backend == "jax" and t.accumulate_steps > 1:
        # No tf.distribute on JAX, so Keras' own accumulation is safe there (see nets/accumulate.py).
        options["gradient_accumulation_steps"] = t.accumulate_steps
    if t.optimizer == "adamw":
        options["weight_decay"] = t.weight_decay
    if t.backbone_lr_multiplier == 1.0 and not t.frozen_epochs:
        return (
            keras.optimizers.AdamW(**options) if t.optimizer == "adamw" else keras.optimizers.Adam(**options)
        )
    indices = backbone_indices(model, backbone)
    logger.info(
        "backbone %s: %d of %d trainable variables at %g x the learning rate%s",
        backbone.name, len(indices), len(model.trainable_variables), t.backbone_lr_multiplier,
        f", frozen for the first {t.frozen_epochs} epochs" if t.frozen_epochs else "",
    )  # fmt: skip
    finetune = FinetuneAdamW if t.optimizer == "adamw" else FinetuneAdam
    return finetune(
        backbone_lr_multiplier=t.backbone_lr_multiplier, frozen_steps=t.frozen_epochs * steps_per_epoch,
        backbone_indices=indices, n_variables=len(model.trainable_variables), **options,
    )  # fmt: skip
