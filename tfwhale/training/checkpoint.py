"""Trainer: epoch checkpoints (weights + optimizer state) that a preempted run resumes from."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import keras

from tfwhale.core import files

logger = logging.getLogger(__name__)

STATE_NAME = "state.json"


def save_weights(model: keras.Model, path: str, write: bool = True) -> str:
    """Save weights (with optimizer state, Keras 3) to a local or gs:// path, atomically; returns sha256.

    write=False (a training process other than the writer): the same save, which on JAX gathers the
    weights with the other processes, goes to a scratch file that is deleted; returns ""."""
    if not write:
        with tempfile.TemporaryDirectory() as scratch:
            model.save_weights(os.path.join(scratch, os.path.basename(path)))
        return ""
    with files.written_via_local(path) as local:
        model.save_weights(local)
    return files.sha256(path)


def load_weights(model: keras.Model, path: str) -> None:
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    with files.local_copy(path) as local:
        model.load_weights(local)


def save_checkpoint(
    model: keras.Model, ckpt_dir: str, epoch: int, state: dict[str, Any], write: bool = True
) -> None:
    """Checkpoint after `epoch` finished epochs; state.json is written last and marks it whole.

    Every training process calls it; only the writer (write=True) touches ckpt_dir."""
    name = f"epoch-{epoch:04d}.weights.h5"
    if not write:
        save_weights(model, name, write=False)
        return
    files.makedirs(ckpt_dir)
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
