"""The trainer CLI on tiny records: run folder, resume after interruption, NaN stop, replicas, bad input."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.records_fixture import make_records
from tfwhale import train
from tfwhale.contracts import records
from tfwhale.core import files
from tfwhale.training.checkpoint import STATE_NAME
from tfwhale.training.distribute import reset_runtime_for_tests

TINY = [
    "--config", "tiny_cpu", "--set", "data.image_size=32", "--set", "model.backbone=TinyConvNet",
    "--set", "data.batch_size=4", "--set", "data.shuffle_buffer=16", "--set", "model.embedding_dim=16",
]  # fmt: skip


@pytest.fixture(scope="module")
def rec(tmp_path_factory) -> str:
    return make_records(tmp_path_factory.mktemp("rec"), n_individuals=6, size=32, n_folds=2)


def _json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _train(rec: str, out: str, *extra: str) -> int:
    return train.main([*TINY, "--records", rec, "--out", out, *extra])


def test_fold_run_folder_has_every_artefact(rec, tmp_path):
    out = str(tmp_path / "run")
    assert _train(rec, out, "--fold", "1", "--set", "train.epochs=2") == 0
    fold = os.path.join(out, "fold1")
    for name in ("config.yaml", "model.keras", "embedding.keras", "best.weights.h5", "last.weights.h5",
                 "history.csv", "run.json", "training_curve.png", "oof.npz", "tensorboard"):  # fmt: skip
        assert os.path.exists(os.path.join(fold, name)), name
    info = _json(os.path.join(fold, "run.json"))
    assert info["status"] == "finished" and info["epochs"] == 2 and info["train_folds"] == [0]
    assert info["records"]["manifest_sha256"] == records.load_manifest(rec).sha256
    oof = np.load(os.path.join(fold, "oof.npz"))
    manifest = records.load_manifest(rec)
    assert oof["embeddings"].shape == (manifest.count("train", [1]), 16)
    np.testing.assert_allclose(np.linalg.norm(oof["embeddings"], axis=1), 1.0, atol=1e-4)
    embedder = keras.models.load_model(os.path.join(fold, "embedding.keras"))
    assert embedder.output_shape == (None, 16)
    # A finished fold is skipped when the same command runs again.
    assert _train(rec, out, "--fold", "1", "--set", "train.epochs=2") == 0
    assert _json(os.path.join(fold, "run.json"))["seconds_this_session"] == info["seconds_this_session"]


def _weights(path: str, names=("conv2d", "dense", "arc_margin_product")) -> dict[str, np.ndarray]:
    """The trainable kernels in a .weights.h5 file (batch-norm statistics are not averaged by EMA)."""
    import h5py

    found = {}
    with h5py.File(path) as f:
        f.visititems(
            lambda name, item: (
                found.__setitem__(name, item[()])
                if name.startswith("layers/")
                and any(n in name for n in names)
                and isinstance(item, h5py.Dataset)
                else None
            )
        )
    return found


def test_weight_ema_is_what_validation_scores_and_the_fold_keeps(rec, tmp_path):
    # momentum ~1: the averages stay at the initial weights while the raw weights move on
    out = str(tmp_path / "run")
    ema = ["--set", "train.ema_momentum=0.99999", "--set", "train.val_every=1"]
    assert _train(rec, out, "--fold", "0", "--set", "train.epochs=3", *ema) == 0
    fold = os.path.join(out, "fold0")
    best, last = (
        _weights(os.path.join(fold, "best.weights.h5")),
        _weights(os.path.join(fold, "last.weights.h5")),
    )
    raw = _weights(os.path.join(fold, "ckpt", "epoch-0003.weights.h5"))  # the checkpoint keeps raw weights
    assert len(best) == len(last) == len(raw) >= 6
    # the best epoch's kept weights are averages (as the final ones are), not that epoch's raw weights
    assert max(np.abs(best[k] - last[k]).max() for k in best) < 1e-5
    assert max(np.abs(raw[k] - last[k]).max() for k in raw) > 5e-4


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_from_last_finished_epoch(rec, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    original = train.train_fold.__globals__["FoldMonitor"].on_epoch_end

    def stop_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise _Interrupt  # as if the TPU VM was preempted right after the checkpoint

    monkeypatch.setattr("tfwhale.training.fold_trainer.FoldMonitor.on_epoch_end", stop_after_first_epoch)
    with pytest.raises(_Interrupt):
        _train(rec, out, "--fold", "0", "--set", "train.epochs=3")
    state = _json(os.path.join(out, "fold0", "ckpt", STATE_NAME))
    assert state["epoch"] == 1 and len(state["history"]) == 1
    first_epoch = state["history"][0]
    monkeypatch.undo()

    assert _train(rec, out, "--fold", "0", "--set", "train.epochs=3") == 0
    info = _json(os.path.join(out, "fold0", "run.json"))
    with open(os.path.join(out, "fold0", "history.csv")) as f:
        history = f.read().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["1", "2", "3"]
    assert info["epochs"] == 3 and info["final"]["epoch"] == 3
    assert info["seconds_per_epoch"][0] == first_epoch["seconds"], "epoch 1 was not trained again"
    # The optimizer continued: its step counter covers all three epochs, so the LR schedule did too.
    steps = info["steps_per_epoch"]
    ckpt = _json(os.path.join(out, "fold0", "ckpt", STATE_NAME))
    assert ckpt["epoch"] == 3
    model = keras.models.load_model(os.path.join(out, "fold0", "model.keras"))
    assert model is not None and steps >= 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(rec, tmp_path, monkeypatch, caplog):
    out = str(tmp_path / "run")
    from tfwhale.training import fold_trainer as fold_module

    original = fold_module.FoldMonitor.on_epoch_end

    def stop_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise _Interrupt  # a resume must keep the config it started with: stop a 3-epoch run early

    monkeypatch.setattr(fold_module.FoldMonitor, "on_epoch_end", stop_after_first_epoch)
    with pytest.raises(_Interrupt):
        _train(rec, out, "--fold", "0", "--set", "train.epochs=3")
    monkeypatch.undo()

    real_losses = fold_module.losses_for

    def nan_loss(y_true, y_pred):
        return keras.ops.mean(y_pred) * np.nan

    def nan_losses(names, triplet_margin=0.3):
        return {name: nan_loss for name in real_losses(names, triplet_margin)}

    monkeypatch.setattr(fold_module, "losses_for", nan_losses)
    assert _train(rec, out, "--fold", "0", "--set", "train.epochs=3") == 1
    assert "NaN in epoch 2" in caplog.text and "epoch 1" in caplog.text
    state = _json(os.path.join(out, "fold0", "ckpt", STATE_NAME))
    assert state["epoch"] == 1, "the NaN epoch must not be checkpointed"


def test_full_trains_every_fold_without_validation(rec, tmp_path):
    out = str(tmp_path / "run")
    assert _train(rec, out, "--full", "--set", "train.epochs=1") == 0
    info = _json(os.path.join(out, "full", "run.json"))
    assert info["train_folds"] == [0, 1] and info["val_fold"] is None and not info["best"]
    assert not os.path.exists(os.path.join(out, "full", "oof.npz"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "data.image_size=48"], "records in"),
        (["--set", "model.backbone=ResNet9000"], "ResNet9000"),
        (["--fold", "7"], "do not exist"),
        (["--set", "train.epochz=1"], "train.epochs"),
    ],
)
def test_bad_input_is_a_clear_error(rec, tmp_path, extra, message, caplog):
    assert _train(rec, str(tmp_path / "run"), *extra) == 1
    assert message in caplog.text


def test_missing_shard_and_foreign_schema_are_clear_errors(tmp_path, caplog):
    root = make_records(tmp_path / "a", size=32)
    manifest = records.load_manifest(root)
    os.remove(manifest.shard_paths("train", [1])[0])
    assert _train(root, str(tmp_path / "run"), "--fold", "0") == 1
    assert "missing" in caplog.text.lower()
    data = dict(manifest.data, schema_version=99)
    files.write_json(os.path.join(root, records.MANIFEST_NAME), data)
    assert _train(root, str(tmp_path / "run2")) == 1
    assert "schema version 99" in caplog.text


def test_tpu_flag_without_tpu_says_to_drop_it(rec, tmp_path, caplog):
    reset_runtime_for_tests()  # earlier tests in this process set up the CPU runtime
    assert _train(rec, str(tmp_path / "run"), "--tpu") == 1
    assert "Drop --tpu" in caplog.text


def _run_script(script: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_extra)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env, cwd="."
    )


def test_two_cpu_replicas_mirrored_strategy(rec, tmp_path):
    out = str(tmp_path / "run")
    args = [*TINY, "--records", rec, "--out", out, "--fold", "0", "--cpu-devices", "2"]
    args += ["--set", "train.ema_momentum=0.99"]  # EMA weights swapped in for validation across replicas
    script = (
        f"import sys; from tfwhale import train; sys.exit(train.main({args!r} + ['--set', 'train.epochs=1']))"
    )
    result = _run_script(script, {})
    assert result.returncode == 0, result.stderr[-3000:]
    info = _json(os.path.join(out, "fold0", "run.json"))
    assert info["replicas"] == 2 and info["global_batch"] == 8


# accumulation over 2 devices is the slow variant (~20 s): `python3 dev.py test -m slow`, and CI
@pytest.mark.parametrize(
    ("accumulate", "global_batch"), [(1, 8), pytest.param(2, 16, marks=pytest.mark.slow)]
)
def test_jax_backend_two_host_devices_data_parallel(rec, tmp_path, accumulate, global_batch):
    pytest.importorskip("jax")
    out = str(tmp_path / "run")
    args = [*TINY, "--records", rec, "--out", out, "--fold", "0", "--set", "train.epochs=2"]
    args += ["--set", f"train.accumulate_steps={accumulate}", "--set", "train.ema_momentum=0.99"]
    script = f"import sys; from tfwhale import train; sys.exit(train.main({args!r}))"
    env = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = _run_script(script, env)
    assert result.returncode == 0, result.stderr[-3000:]
    info = _json(os.path.join(out, "fold0", "run.json"))
    assert info["versions"]["keras_backend"] == "jax"
    assert info["replicas"] == 2 and info["global_batch"] == global_batch
    history = _json(os.path.join(out, "fold0", "ckpt", STATE_NAME))["history"]
    assert np.isfinite([row["loss"] for row in history]).all()
