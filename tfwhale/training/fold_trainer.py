"""Trainer: one fold from build to artefacts (model, embedding model, weights, history, OOF embeddings)."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from tfwhale.contracts import run_folder
from tfwhale.contracts.records import Manifest
from tfwhale.core import files
from tfwhale.core.config import Config, save_config
from tfwhale.feed.augment import training_classes
from tfwhale.feed.data import train_dataset, val_loss_dataset
from tfwhale.nets.accumulate import with_accumulation
from tfwhale.nets.layers import dynamic_margins
from tfwhale.nets.losses import losses_for
from tfwhale.nets.model import build_models
from tfwhale.training import checkpoint, finetune, run_record
from tfwhale.training.distribute import Runtime
from tfwhale.training.validate import validate_fold

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, ...); the last good checkpoint is kept."""


@dataclass(frozen=True)
class FoldPlan:
    """What one fold trains on, and where it writes."""

    name: str  # "fold0".. or "full"
    val_fold: int | None
    train_folds: list[int]
    out_dir: str
    global_batch: int  # examples per optimizer update, all replicas, all micro-batches
    steps_per_epoch: int  # optimizer updates per epoch
    data_batch: int  # examples per batch this process's pipeline delivers
    fit_steps: int  # batches per epoch that fit consumes (= optimizer calls)
    share: tuple[int, int] = (0, 1)  # (this process, training processes): whose records it reads


def plan_fold(
    cfg: Config, manifest: Manifest, val_fold: int | None, run_dir: str, runtime: Runtime
) -> FoldPlan:
    train_folds = [f for f in range(manifest.n_folds) if f != val_fold]
    accumulate = cfg.train.accumulate_steps
    global_batch = cfg.data.batch_size * runtime.replicas * accumulate
    n_train = manifest.count("train", train_folds)
    steps = cfg.train.steps_per_epoch or max(1, n_train // global_batch)
    name = run_folder.fold_dir_name(val_fold)
    if runtime.backend == "jax" and accumulate > 1:
        # JAX accumulates inside the optimizer (accumulate.py): fit feeds micro-batches, one per call.
        data_batch, fit_steps = global_batch // accumulate, steps * accumulate
    else:  # TF splits each full batch into micro-batches inside the train step
        data_batch, fit_steps = global_batch, steps
    if runtime.backend == "jax":  # each JAX process delivers its part of the batch (TF splits it itself)
        data_batch //= runtime.num_processes
    return FoldPlan(
        name, val_fold, train_folds, files.join(run_dir, name), global_batch, steps, data_batch, fit_steps,
        (runtime.process_id, runtime.num_processes),
    )  # fmt: skip


def build_compiled(cfg: Config, manifest: Manifest, plan: FoldPlan, runtime: Runtime):
    """(compiled model to fit, plain training model, embedding model), built in the runtime's scope."""
    m = cfg.model
    n_classes = training_classes(cfg.augment, len(manifest.individuals))
    margins = None
    if m.dynamic_margins:
        # mirror classes (flip=new_class) hold about half of each individual's photos, as many as the other
        counts = (list(manifest.photo_counts) * 2)[:n_classes]
        margins = dynamic_margins(counts, a=m.margin_a, lam=m.margin_lambda, b=m.margin_b)
    with runtime.scope():
        train_model, embedding_model = build_models(
            m, image_size=manifest.image_size, n_classes=n_classes,
            n_species=len(manifest.species), dynamic_margins=margins,
        )  # fmt: skip
        backbone = finetune.backbone_of(train_model)
        if cfg.train.freeze_bn:
            logger.info("%s: %d BatchNorm layers frozen", backbone.name, finetune.freeze_batch_norm(backbone))
        model = with_accumulation(train_model, cfg.train.accumulate_steps)
        # The schedule counts optimizer calls, which on JAX with accumulation are micro-steps.
        optimizer = finetune.make_optimizer(
            cfg.train, model, backbone, plan.fit_steps, plan.global_batch, runtime.backend
        )
        model.compile(
            optimizer=optimizer,
            loss=losses_for(train_model.output.keys(), triplet_margin=m.triplet_margin),
            loss_weights=loss_weights(cfg, train_model.output.keys()),
            jit_compile=runtime.kind != "cpu" or runtime.backend == "jax",
        )
    return model, train_model, embedding_model


def loss_weights(cfg: Config, outputs) -> dict[str, float]:
    weights = {name: 1.0 for name in outputs}
    if "species" in weights:
        weights["species"] = cfg.model.species_loss_weight
    if "softmax" in weights and "embedding" in weights:
        weights["softmax"] = cfg.model.triplet_softmax_weight
    return weights


def to_targets(outputs):
    """Map the pipeline's (inputs, labels) to the training model's output names."""
    names = list(outputs)

    def mapper(inputs, labels):
        return inputs, {n: labels["species_label"] if n == "species" else labels["label"] for n in names}

    return mapper


class FoldMonitor(keras.callbacks.Callback):
    """Per epoch: NaN guard, validation MAP@5, best weights, history, checkpoint (in that order).

    With weight EMA (ema_swap, the SwapEMAWeights callback that also gives fit's val_loss the
    averaged weights), validation scores the averaged weights and the best epoch keeps them; the
    checkpoint holds the raw weights, the averages riding along in the optimizer state.
    """

    def __init__(
        self, cfg: Config, manifest: Manifest, plan: FoldPlan, nets, state: dict[str, Any], ema_swap=None,
        runtime: Runtime | None = None,
    ):  # fmt: skip
        super().__init__()
        self.cfg, self.manifest, self.plan, self.ema_swap = cfg, manifest, plan, ema_swap
        self.runtime = runtime
        self.writes = runtime is None or runtime.is_writer  # only one of several processes writes
        self.train_model, self.embedding_model = nets
        self.history: list[dict[str, Any]] = state.get("history", [])
        self.best: dict[str, Any] = state.get("best", {})
        self.nan_at: int | None = None
        self._epoch_start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.nan_at is None:
            self.nan_at = len(self.history) + 1
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_at is not None:
            return  # never checkpoint a NaN state
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        row["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if self._validate_now(epoch + 1):
            with self._averaged_weights():
                predict = self.cfg.predict
                metrics, oof = validate_fold(
                    self.embedding_model, self.manifest, self.plan.val_fold, self.cfg.data.batch_size,
                    predict.new_share, predict.new_share_seed, self.runtime,
                )  # fmt: skip
                row.update(metrics)
                if metrics["val_map5"] > self.best.get("val_map5", -1.0):
                    self._keep_best(epoch + 1, metrics, oof)
        row["seconds"] = round(time.time() - self._epoch_start, 2)
        self.history.append(row)
        if self.writes:
            run_record.write_history(files.join(self.plan.out_dir, run_folder.HISTORY_NAME), self.history)
        state = {"history": self.history, "best": self.best}
        ckpt = files.join(self.plan.out_dir, "ckpt")
        checkpoint.save_checkpoint(self.model, ckpt, epoch + 1, state, write=self.writes)
        logger.info("%s epoch %d: %s", self.plan.name, epoch + 1, _brief(row))

    @contextlib.contextmanager
    def _averaged_weights(self):
        if self.ema_swap is None:
            yield
            return
        self.ema_swap.on_test_begin()  # the public hooks of SwapEMAWeights: averages in, then back out
        try:
            yield
        finally:
            self.ema_swap.on_test_end()

    def _validate_now(self, finished: int) -> bool:
        if self.plan.val_fold is None:
            return False
        return finished % self.cfg.train.val_every == 0 or finished == self.cfg.train.epochs

    def _keep_best(self, epoch: int, metrics: dict[str, Any], oof: dict[str, Any]) -> None:
        out = self.plan.out_dir
        checkpoint.save_weights(self.train_model, files.join(out, "best.weights.h5"), write=self.writes)
        if self.writes:
            buffer = io.BytesIO()
            np.savez(buffer, epoch=epoch, **oof)
            files.write_bytes(files.join(out, run_folder.OOF_NAME), buffer.getvalue())
        self.best = {"epoch": epoch, **metrics}


def _brief(row: dict[str, Any]) -> str:
    keys = ("loss", "val_loss", "val_map5", "val_threshold", "lr", "seconds")
    return ", ".join(f"{k}={row[k]:.4g}" for k in keys if k in row)


def train_fold(cfg: Config, manifest: Manifest, plan: FoldPlan, runtime: Runtime) -> run_folder.RunRecord:
    """Train (or resume) one fold and write its artefacts; returns its run.json content."""
    if runtime.is_writer:
        files.makedirs(plan.out_dir)
        save_config(cfg, files.join(plan.out_dir, run_folder.CONFIG_NAME))
    model, train_model, embedding_model = build_compiled(cfg, manifest, plan, runtime)
    with runtime.scope():  # restoring builds the optimizer, whose variables belong to the strategy
        state = checkpoint.load_checkpoint(model, files.join(plan.out_dir, "ckpt")) or {}
    ema_swap = keras.callbacks.SwapEMAWeights() if cfg.train.ema_momentum else None
    monitor = FoldMonitor(cfg, manifest, plan, (train_model, embedding_model), state, ema_swap, runtime)
    started = time.time()
    dataset = train_dataset(manifest, plan.train_folds, cfg, plan.data_batch, cfg.train.seed, plan.share)
    dataset = dataset.map(to_targets(train_model.output.keys()))
    validation = None
    if plan.val_fold is not None:
        validation = val_loss_dataset(manifest, [plan.val_fold], cfg, plan.data_batch, plan.share)
        validation = validation.map(to_targets(train_model.output.keys()))
    callbacks: list[keras.callbacks.Callback] = [monitor]
    if runtime.is_writer:
        callbacks.append(keras.callbacks.TensorBoard(files.join(plan.out_dir, "tensorboard")))
    if ema_swap is not None:
        callbacks.insert(0, ema_swap)
    model.fit(
        dataset, epochs=cfg.train.epochs, initial_epoch=state.get("epoch", 0),
        steps_per_epoch=plan.fit_steps, validation_data=validation,
        validation_freq=cfg.train.val_every, callbacks=callbacks, verbose=cfg.train.verbose,
        shuffle=False,  # the tf.data pipeline shuffles; Keras would only warn that it cannot
    )  # fmt: skip
    if monitor.nan_at is not None:
        last = monitor.history[-1]["epoch"] if monitor.history else 0
        raise TrainingError(
            f"{plan.name}: loss became NaN in epoch {monitor.nan_at}; the last good checkpoint "
            f"(epoch {last}) is kept in {files.join(plan.out_dir, 'ckpt')}. Lower train.lr_max_per_sample "
            "or set train.clipnorm, then run the same command again to resume."
        )
    return finish_fold(cfg, manifest, plan, runtime, monitor, time.time() - started)


def finish_fold(cfg, manifest, plan, runtime, monitor: FoldMonitor, seconds: float) -> run_folder.RunRecord:
    out, writes = plan.out_dir, runtime.is_writer
    checkpoint.save_weights(monitor.train_model, files.join(out, "last.weights.h5"), write=writes)
    if monitor.best:
        _wait_for_writer(runtime, f"{plan.name} best weights")  # the others read what process 0 wrote
        checkpoint.load_weights(monitor.train_model, files.join(out, "best.weights.h5"))
    else:  # no validation (--full): the last weights are the ones to keep
        checkpoint.save_weights(monitor.train_model, files.join(out, "best.weights.h5"), write=writes)
    _save_model(monitor.train_model, files.join(out, run_folder.TRAIN_MODEL), writes)
    _save_model(monitor.embedding_model, files.join(out, run_folder.EMBEDDING_MODEL), writes)
    record = run_folder.RunRecord(
        fold=plan.name, val_fold=plan.val_fold, train_folds=list(plan.train_folds),
        epochs=len(monitor.history), best=monitor.best or {},
        final=monitor.history[-1] if monitor.history else {},
        seconds_this_session=round(seconds, 1),
        seconds_per_epoch=[row.get("seconds") for row in monitor.history],
        global_batch=plan.global_batch, steps_per_epoch=plan.steps_per_epoch,
        replicas=runtime.replicas, device=runtime.kind,
        records=run_folder.RecordsRef(
            root=manifest.root, manifest_sha256=manifest.sha256, labels_sha256=manifest.labels_sha256,
            n_folds=manifest.n_folds, image_size=manifest.image_size,
        ),
        versions=run_record.library_versions(),
        extra={"processes": runtime.num_processes},
    )  # fmt: skip
    if writes:
        run_record.plot_curve(files.join(out, run_folder.CURVE_NAME), monitor.history, f"{plan.name}")
        files.write_json(files.join(out, run_folder.RUN_JSON), record.to_json())
    _wait_for_writer(runtime, f"{plan.name} finished")  # no process moves on before the fold is whole
    return record


def _save_model(model: keras.Model, path: str, write: bool = True) -> None:
    if not write:  # the same (on JAX collective) save as the writer's, into scratch
        with tempfile.TemporaryDirectory() as scratch:
            model.save(os.path.join(scratch, files.basename(path)))
        return
    with files.written_via_local(path) as local:
        model.save(local)


def _wait_for_writer(runtime: Runtime, what: str) -> None:
    """All training processes meet here (a no-op for one), after process 0 wrote `what`."""
    if runtime.num_processes > 1:
        from tfwhale.training.cluster import barrier

        barrier(runtime, what)
