"""Learning-rate curves: hand-worked values, the config helper, and the resumable Keras schedule."""

import keras
import pytest

from tfwhale.core.config import TrainConfig
from tfwhale.training.schedules import (
    EpochCurveSchedule,
    learning_rate_schedule,
    lr_at_epoch,
    ramp_sustain_decay,
    warmup_cosine,
)

BASELINE = {"lr_start": 1e-6, "lr_max": 1.28e-3, "lr_min": 1e-6, "ramp_epochs": 4, "sustain_epochs": 0}


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, 1e-6),  # lr_start
        (2, 6.405e-4),  # 1e-6 + (1.28e-3 - 1e-6) * 2 / 4
        (4, 1.28e-3),  # end of ramp, no sustain: lr_max
        (5, 1.1521e-3),  # (1.28e-3 - 1e-6) * 0.9 + 1e-6 = 1.1511e-3 + 1e-6
        (6, 1.03699e-3),  # 1.279e-3 * 0.81 + 1e-6
        (54, 7.5917e-6),  # 1.279e-3 * 0.9 ** 50 + 1e-6 = 1.279e-3 * 0.0051538 + 1e-6
    ],
)
def test_ramp_sustain_decay_matches_the_baseline(epoch, expected):
    assert ramp_sustain_decay(epoch, decay=0.9, **BASELINE) == pytest.approx(expected, rel=1e-4)


def test_sustain_holds_the_peak():
    params = {
        "lr_start": 0.0,
        "lr_max": 1.0,
        "lr_min": 0.1,
        "ramp_epochs": 2,
        "sustain_epochs": 2,
        "decay": 0.5,
    }
    assert ramp_sustain_decay(1, **params) == pytest.approx(0.5)  # halfway up the ramp
    assert ramp_sustain_decay(3, **params) == pytest.approx(1.0)  # sustained
    assert ramp_sustain_decay(5, **params) == pytest.approx(0.55)  # 0.9 * 0.5 ** 1 + 0.1
    assert ramp_sustain_decay(0, **{**params, "ramp_epochs": 0}) == pytest.approx(1.0)  # no ramp at all


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0.5, 0.5),  # halfway through the 1-epoch warmup from 0 to 1
        (1, 1.0),  # peak
        (3.5, 0.853553),  # 0.5 * (1 + cos(pi * 2.5 / 10))
        (6, 0.5),  # halfway through the cosine
        (11, 0.0),  # lr_min at the last epoch
        (15, 0.0),  # and after it
    ],
)
def test_warmup_cosine(epoch, expected):
    lr = warmup_cosine(epoch, lr_start=0.0, lr_max=1.0, lr_min=0.0, warmup_epochs=1, total_epochs=11)
    assert lr == pytest.approx(expected, abs=1e-6)


def test_lr_at_epoch_scales_with_the_examples_per_update():
    assert lr_at_epoch(TrainConfig(), 4, global_batch=256) == pytest.approx(1.28e-3)  # 5e-6 x 256
    assert lr_at_epoch(TrainConfig(), 4, global_batch=32) == pytest.approx(1.6e-4)  # 5e-6 x 32
    cosine = TrainConfig(schedule="cosine", warmup_epochs=2, epochs=10, lr_start=0.0, lr_min=0.0)
    assert lr_at_epoch(cosine, 1, global_batch=100) == pytest.approx(2.5e-4)  # half of 5e-6 x 100


def test_schedule_follows_the_optimizer_iterations():
    per_epoch = learning_rate_schedule(TrainConfig(), steps_per_epoch=10, global_batch=256)
    assert float(per_epoch(25)) == pytest.approx(ramp_sustain_decay(2, decay=0.9, **BASELINE), rel=1e-5)
    smooth = learning_rate_schedule(TrainConfig(lr_update="step"), steps_per_epoch=10, global_batch=256)
    assert float(smooth(25)) == pytest.approx(ramp_sustain_decay(2.5, decay=0.9, **BASELINE), rel=1e-5)
    optimizer = keras.optimizers.Adam(learning_rate=per_epoch)
    optimizer.iterations.assign(57)  # as restored from a checkpoint after 5.7 epochs
    assert float(optimizer.learning_rate) == pytest.approx(1.1521e-3, rel=1e-4)  # epoch 5


def test_schedule_serializes_alone_and_inside_an_optimizer():
    schedule = learning_rate_schedule(
        TrainConfig(schedule="cosine", epochs=6), steps_per_epoch=7, global_batch=64
    )
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, EpochCurveSchedule)
    assert restored.get_config() == schedule.get_config()
    optimizer = keras.optimizers.Adam.from_config(keras.optimizers.Adam(learning_rate=schedule).get_config())
    for step in (0, 6, 20, 41):
        assert float(restored(step)) == pytest.approx(float(schedule(step)))
    optimizer.iterations.assign(20)
    assert float(optimizer.learning_rate) == pytest.approx(float(schedule(20)))


def test_schedule_refuses_bad_arguments():
    with pytest.raises(ValueError, match="unknown learning-rate curve 'linear'"):
        EpochCurveSchedule("linear", {}, steps_per_epoch=10)
    with pytest.raises(ValueError, match="steps_per_epoch must be at least 1"):
        EpochCurveSchedule("ramp", {}, steps_per_epoch=0)
