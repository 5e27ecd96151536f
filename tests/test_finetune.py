"""Fine-tuning: backbone learning-rate multiplier, frozen first epochs, frozen BatchNorm; fit and trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.records_fixture import make_records
from tfwhale.core.config import ConfigError, TrainConfig, load_config
from tfwhale.nets.model import build_models
from tfwhale.training import finetune

STEPS = 2  # optimizer steps per "epoch" in the in-process tests


def _nets(seed: int = 0):
    keras.utils.set_random_seed(seed)
    train_model, _ = build_models(
        backbone="TinyConvNet", weights=None, image_size=32, n_classes=4, embedding_dim=8, head="softmax"
    )
    return train_model, finetune.backbone_of(train_model)


def _data(n: int = 8):
    rng = np.random.default_rng(0)
    x = {"image": rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32"), "label": np.arange(n) % 4}
    return x, {"softmax": np.arange(n) % 4}


def _fit(t: TrainConfig, steps: int, freeze_bn: bool = False, seed: int = 0):
    """(backbone kernels, head kernels, backbone BN moving means) before and after `steps` updates."""
    model, backbone = _nets(seed)
    if freeze_bn:
        finetune.freeze_batch_norm(backbone)
    model.compile(
        optimizer=finetune.make_optimizer(t, model, backbone, STEPS, global_batch=8),
        loss={"softmax": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
    )

    def snapshot():
        kernels = [np.array(w) for w in backbone.weights if w.path.endswith("kernel")]
        head = [np.array(model.get_layer(n).kernel) for n in ("neck_dense", "softmax")]
        means = [np.array(w) for w in backbone.weights if "moving_mean" in w.path]
        return kernels, head, means

    before = snapshot()
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=steps, verbose=0, shuffle=False)
    return before, snapshot()


def _change(before, after) -> float:
    return float(np.mean([np.abs(a - b).mean() for a, b in zip(before, after, strict=True)]))


CONSTANT = {
    "schedule": "cosine",
    "warmup_epochs": 0.0,
    "lr_max_per_sample": 1e-4,
    "lr_min": 8e-4,
    "epochs": 5,
}


def test_backbone_steps_at_the_multiplier_of_the_head():
    (b_full, h_full, _), (a_full, ah_full, _) = _fit(TrainConfig(**CONSTANT), 1)
    (b_slow, h_slow, _), (a_slow, ah_slow, _) = _fit(TrainConfig(**CONSTANT, backbone_lr_multiplier=0.1), 1)
    # Adam's first step is lr x sign(gradient) per weight: one tenth of the rate, one tenth of the step
    ratio = _change(b_slow, a_slow) / _change(b_full, a_full)
    assert 0.08 < ratio < 0.12, ratio
    np.testing.assert_allclose(_change(h_slow, ah_slow), _change(h_full, ah_full), rtol=1e-3)


def test_frozen_epochs_hold_the_backbone_then_release_it():
    t = TrainConfig(**CONSTANT, frozen_epochs=1, backbone_lr_multiplier=0.5)
    (backbone, head, _), (after, head_after, _) = _fit(t, STEPS)  # fit's "epoch" here is one step
    assert _change(backbone, after) == 0.0 and _change(head, head_after) > 0
    (backbone, _, _), (after, _, _) = _fit(t, STEPS + 1)
    assert _change(backbone, after) > 0


def test_freeze_bn_keeps_the_backbone_statistics_and_trains_the_neck():
    model, backbone = _nets()
    assert finetune.freeze_batch_norm(backbone) == 4  # TinyConvNet: one BatchNorm per conv block
    assert not any("gamma" in v.path or "beta" in v.path for v in backbone.trainable_variables)
    assert model.get_layer("neck_bn").trainable
    (_, _, means), (_, _, means_after) = _fit(TrainConfig(**CONSTANT), 2, freeze_bn=True)
    assert _change(means, means_after) == 0.0
    (_, _, means), (_, _, means_after) = _fit(TrainConfig(**CONSTANT), 2)
    assert _change(means, means_after) > 0  # without freeze_bn they follow the batches


def test_plain_config_keeps_the_plain_optimizer_and_the_finetune_one_round_trips():
    model, backbone = _nets()
    plain = finetune.make_optimizer(TrainConfig(), model, backbone, STEPS, 8)
    assert type(plain) is keras.optimizers.Adam
    t = TrainConfig(optimizer="adamw", weight_decay=0.01, backbone_lr_multiplier=0.2, frozen_epochs=2)
    optimizer = finetune.make_optimizer(t, model, backbone, STEPS, 8)
    assert isinstance(optimizer, finetune.FinetuneAdamW) and optimizer.frozen_steps == 2 * STEPS
    assert optimizer.backbone_indices == finetune.backbone_indices(model, backbone)
    assert len(optimizer.backbone_indices) == len(backbone.trainable_variables) > 0
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, finetune.FinetuneAdamW)
    assert (restored.backbone_lr_multiplier, restored.frozen_steps) == (0.2, 4)
    assert restored.backbone_indices == optimizer.backbone_indices
    with pytest.raises(ValueError, match="set up for"):
        restored.build(model.trainable_variables[:3])


def test_config_keys_and_their_checks():
    cfg = load_config(
        overrides=["train.backbone_lr_multiplier=0.1", "train.frozen_epochs=1", "train.freeze_bn=true"]
    )
    assert (cfg.train.backbone_lr_multiplier, cfg.train.frozen_epochs, cfg.train.freeze_bn) == (0.1, 1, True)
    with pytest.raises(ConfigError, match=r"backbone_lr_multiplier=-1\.0 must be >= 0"):
        load_config(overrides=["train.backbone_lr_multiplier=-1"])
    with pytest.raises(ConfigError, match="frozen_epochs=30 must be in"):
        load_config(overrides=["train.frozen_epochs=30"])


# ---- the trainer, under MirroredStrategy (2 logical CPUs) and on JAX (2 host devices)

TINY = [
    "--config", "tiny_cpu", "--set", "data.image_size=32", "--set", "model.backbone=TinyConvNet",
    "--set", "data.batch_size=4", "--set", "data.shuffle_buffer=16", "--set", "model.embedding_dim=16",
    "--set", "train.epochs=1", "--set", "train.frozen_epochs=1", "--set", "train.freeze_bn=true",
    "--set", "train.backbone_lr_multiplier=0.1",
]  # fmt: skip

# Record the backbone as built, train one frozen epoch, compare with the saved model's backbone.
SCRIPT = """
import sys, numpy as np
from tfwhale import train
from tfwhale.nets.model import load_saved_model
from tfwhale.training import finetune, fold_trainer
built = fold_trainer.build_compiled
start = {{}}
def recording(*args, **kwargs):
    out = built(*args, **kwargs)
    start['backbone'] = [np.array(w) for w in finetune.backbone_of(out[1]).weights]
    start['neck'] = np.array(out[1].get_layer('neck_dense').kernel)
    return out
fold_trainer.build_compiled = recording
code = train.main({args!r})
model = load_saved_model({model!r})
after = [np.array(w) for w in finetune.backbone_of(model).weights]
assert code == 0, code
assert all(np.array_equal(a, b) for a, b in zip(start['backbone'], after)), 'backbone moved while frozen'
assert not np.array_equal(start['neck'], np.array(model.get_layer('neck_dense').kernel)), 'neck did not train'
print('FROZEN-OK')
"""


@pytest.fixture(scope="module")
def rec(tmp_path_factory) -> str:
    return make_records(tmp_path_factory.mktemp("rec"), n_individuals=6, size=32, n_folds=2)


# the JAX variant (~20 s) runs with the slow tests: `python3 dev.py test -m slow`, and CI
@pytest.mark.parametrize("backend", ["tensorflow", pytest.param("jax", marks=pytest.mark.slow)])
def test_trainer_keeps_a_frozen_backbone_across_two_replicas(rec, tmp_path, backend):
    if backend == "jax":
        pytest.importorskip("jax")
    out = str(tmp_path / "run")
    args = [*TINY, "--records", rec, "--out", out, "--fold", "0"]
    env = dict(os.environ, KERAS_BACKEND=backend)
    if backend == "jax":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    else:
        args += ["--cpu-devices", "2"]
    script = SCRIPT.format(args=args, model=os.path.join(out, "fold0", "model.keras"))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env, cwd="."
    )
    assert result.returncode == 0 and "FROZEN-OK" in result.stdout, result.stderr[-3000:]
    with open(os.path.join(out, "fold0", "run.json")) as f:
        info = json.load(f)
    assert info["replicas"] == 2 and info["versions"]["keras_backend"] == backend
