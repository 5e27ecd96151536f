"""Learning-rate curves for the train stage, as functions of (fractional) epoch and as a Keras schedule."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from tfwhale.core.config import TrainConfig


def _number_or_tensor(epoch: Any, lr: Any) -> Any:
    """Plain float for a plain-number epoch (tables, plots, tests); a tensor inside a graph."""
    return float(ops.convert_to_numpy(lr)) if isinstance(epoch, int | float) else lr


def ramp_sustain_decay(
    epoch: Any,
    lr_start: float,
    lr_max: float,
    lr_min: float,
    ramp_epochs: float,
    sustain_epochs: float,
    decay: float,
) -> Any:
    """The TPU baseline's curve: linear lr_start -> lr_max over ramp_epochs, hold lr_max for
    sustain_epochs, then (lr_max - lr_min) * decay ** (epochs since the hold ended) + lr_min."""
    e = ops.cast(epoch, "float32")
    ramp = lr_start + (lr_max - lr_start) * e / ramp_epochs if ramp_epochs > 0 else ops.full_like(e, lr_max)
    since_hold = ops.maximum(e - ramp_epochs - sustain_epochs, 0.0)
    decayed = (lr_max - lr_min) * ops.power(decay, since_hold) + lr_min
    held = ops.where(e < ramp_epochs + sustain_epochs, lr_max, decayed)
    return _number_or_tensor(epoch, ops.where(e < ramp_epochs, ramp, held))


def warmup_cosine(
    epoch: Any,
    lr_start: float,
    lr_max: float,
    lr_min: float,
    warmup_epochs: float,
    total_epochs: float,
) -> Any:
    """Linear lr_start -> lr_max over warmup_epochs, then half a cosine down to lr_min at total_epochs."""
    e = ops.cast(epoch, "float32")
    warm = (
        lr_start + (lr_max - lr_start) * e / warmup_epochs if warmup_epochs > 0 else ops.full_like(e, lr_max)
    )
    progress = ops.clip((e - warmup_epochs) / max(total_epochs - warmup_epochs, 1e-9), 0.0, 1.0)
    cosine = lr_min + 0.5 * (lr_max - lr_min) * (1.0 + ops.cos(math.pi * progress))
    return _number_or_tensor(epoch, ops.where(e < warmup_epochs, warm, cosine))


def lr_max(cfg: TrainConfig, global_batch: int) -> float:
    """Peak rate, scaled with the examples behind one optimizer update (the baseline: 5e-6 x batch).

    global_batch counts every replica and every accumulated micro-batch of one update.
    """
    return cfg.lr_max_per_sample * global_batch


def _curve_params(cfg: TrainConfig, global_batch: int) -> dict[str, float]:
    common = {"lr_start": cfg.lr_start, "lr_max": lr_max(cfg, global_batch), "lr_min": cfg.lr_min}
    if cfg.schedule == "ramp":
        return {
            **common,
            "ramp_epochs": cfg.ramp_epochs,
            "sustain_epochs": cfg.sustain_epochs,
            "decay": cfg.decay,
        }
    return {**common, "warmup_epochs": cfg.warmup_epochs, "total_epochs": float(cfg.epochs)}


_CURVES = {"ramp": ramp_sustain_decay, "cosine": warmup_cosine}


def lr_at_epoch(cfg: TrainConfig, epoch: float, global_batch: int) -> float:
    """The configured curve's learning rate at `epoch` (0-based; fractional allowed)."""
    return float(_CURVES[cfg.schedule](float(epoch), **_curve_params(cfg, global_batch)))


@keras.saving.register_keras_serializable(package="tfwhale")
class EpochCurveSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """An epoch curve driven by the optimizer's iteration counter, so a resumed optimizer resumes the curve.

    per_step=False reproduces a per-epoch callback (the rate changes at epoch boundaries);
    per_step=True follows the curve smoothly within epochs.
    """

    def __init__(self, curve: str, params: dict[str, float], steps_per_epoch: int, per_step: bool = False):
        if curve not in _CURVES:
            raise ValueError(f"unknown learning-rate curve {curve!r}; choose from {sorted(_CURVES)}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
        self.curve = curve
        self.params = dict(params)
        self.steps_per_epoch = int(steps_per_epoch)
        self.per_step = bool(per_step)

    def __call__(self, step: Any) -> Any:
        epoch = ops.cast(step, "float32") / float(self.steps_per_epoch)
        if not self.per_step:
            epoch = ops.floor(epoch)
        return _CURVES[self.curve](epoch, **self.params)

    def get_config(self) -> dict[str, Any]:
        return {
            "curve": self.curve,
            "params": self.params,
            "steps_per_epoch": self.steps_per_epoch,
            "per_step": self.per_step,
        }


def learning_rate_schedule(cfg: TrainConfig, steps_per_epoch: int, global_batch: int) -> EpochCurveSchedule:
    """The optimizer's learning_rate for this config.

    steps_per_epoch counts what the optimizer's `iterations` counts: optimizer updates per epoch;
    global_batch the examples behind one update (replicas x accumulated micro-batches included).
    """
    return EpochCurveSchedule(
        curve=cfg.schedule,
        params=_curve_params(cfg, global_batch),
        steps_per_epoch=steps_per_epoch,
        per_step=cfg.lr_update == "step",
    )
