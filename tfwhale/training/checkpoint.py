"""Trainer: epoch checkpoints (weights + optimizer state) that a preempted run resumes from."""

from __future__ import annotations

import logging
from typing import Any

import keras

from tfwhale.core import files

logger = logging.getLogger(__name__)

STATE_NAME = "state.json"


def save_weights(model: keras.Model, path: str) -> str:
    """Save weights (with optimizer state, Keras 3) to a local or gs:// path, atomically; returns sha256."""
    with files.written_via_local(path) as local:
        model.save_weights(local)
    return files.sha256(path)


def load_weights(model: keras.Model, path: str) -> None:
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    with files.local_copy(path) as local:
        model.load_weights(local)


def save_checkpoint(model: keras.Model, ckpt_dir: str, epoch: int, state: dict[str, Any]) -> None:
    """Checkpoint after `epoch` finished epochs; state.json is written last and marks it whole."""
    files.makedirs(ckpt_dir)
    name = f"epoch-{epoch:04d}.weights.h5"
    digest = save_weights(model, files.join(ckpt_dir, name))
    files.write_json(
        files.join(ckpt_dir, STATE_NAME), {**state, "epoch": epoch, "weights": name, "sha256": digest}
    )
    for old in files.listdir(ckpt_dir):
        if old.startswith("epoch-") and old != name:
            files.remove(files.join(ckpt_dir, old))


def load_checkpoint(model: keras.Model, ckpt_dir: str) -> dict[str, Any] | None:
    """Restore the last whole checkpoint into a compiled model; None when there is none."""
    state_path = files.join(ckpt_dir, STATE_NAME)
    if not files.exists(state_path):
        return None
    state = files.read_json(state_path)
    weights = files.join(ckpt_dir, state["weights"])
    if not files.exists(weights) or files.sha256(weights) != state["sha256"]:
        raise RuntimeError(
            f"checkpoint {weights} is missing or does not match {state_path}; "
            "delete the ckpt folder to restart this fold"
        )
    load_weights(model, weights)
    logger.info("resuming from %s after epoch %d", ckpt_dir, state["epoch"])
    return state
