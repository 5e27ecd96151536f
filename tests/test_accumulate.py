"""Gradient accumulation: N micro-batches of b in one step == one step of batch N*b."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tfwhale.nets.accumulate import AccumulatingModel, with_accumulation


def _toy_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    image = keras.Input((6,), name="image")
    label = keras.Input((), dtype="int32", name="label")
    hidden = keras.layers.Dense(5, activation="tanh")(image)
    logits = keras.layers.Dense(3, name="logits")(hidden)
    return keras.Model({"image": image, "label": label}, {"logits": logits})


def _batch(n: int = 8):
    rng = np.random.default_rng(1)
    x = {"image": rng.normal(size=(n, 6)).astype("float32"), "label": rng.integers(0, 3, n)}
    return x, {"logits": x["label"]}


def _train_two_steps(model: keras.Model, optimizer: str = "adam") -> list[np.ndarray]:
    # SGD is sensitive to the gradient's scale (Adam is nearly not), so it catches sum-vs-mean slips.
    model.compile(
        optimizer=keras.optimizers.Adam(0.05) if optimizer == "adam" else keras.optimizers.SGD(0.5),
        loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
    )
    x, y = _batch()
    for _ in range(2):
        model.train_on_batch(x, y)
    return [w.numpy() if hasattr(w, "numpy") else np.asarray(w) for w in model.get_weights()]


@pytest.mark.parametrize(("steps", "optimizer"), [(2, "adam"), (4, "adam"), (4, "sgd")])
def test_accumulated_steps_match_one_big_batch(steps, optimizer):
    reference = _train_two_steps(_toy_model(), optimizer)
    base = _toy_model()
    accumulated = _train_two_steps(with_accumulation(base, steps), optimizer)
    for ref, acc in zip(reference, accumulated, strict=True):
        np.testing.assert_allclose(acc, ref, rtol=1e-5, atol=1e-6)
    initial = _toy_model().get_weights()
    assert not np.allclose(initial[0], accumulated[0]), "training must have changed the weights"


def test_accumulation_one_is_the_plain_model():
    base = _toy_model()
    assert with_accumulation(base, 1) is base
    with pytest.raises(ValueError, match="accumulate_steps"):
        AccumulatingModel(inputs=base.inputs, outputs=base.outputs, accumulate_steps=0)


def test_accumulation_runs_under_mirrored_strategy_on_two_cpus(tmp_path):
    """MirroredStrategy needs the CPU split before TF starts, so this runs in a fresh process."""
    script = textwrap.dedent(
        """
        import numpy as np, keras, tensorflow as tf
        from tfwhale.training.distribute import split_cpu
        split_cpu(2)
        from tests.test_accumulate import _toy_model, _batch, _train_two_steps
        reference = _train_two_steps(_toy_model())
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            from tfwhale.nets.accumulate import with_accumulation
            wrapped = with_accumulation(_toy_model(), 2)
            x, y = _batch()
            wrapped.compile(optimizer=keras.optimizers.Adam(0.05),
                loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
        ds = tf.data.Dataset.from_tensors((x, y)).repeat(2)
        wrapped.fit(ds, epochs=1, verbose=0)
        for ref, got in zip(reference, wrapped.get_weights()):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
        print("MIRRORED_OK", strategy.num_replicas_in_sync)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd="."
    )
    assert "MIRRORED_OK 2" in result.stdout, result.stderr[-3000:]
