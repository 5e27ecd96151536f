"""augment.flip: true (mirror = same individual), false (never mirrored), new_class (mirror = id_flip)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import tensorflow as tf

from tests.records_fixture import make_records
from tests.run_fixture import make_run
from tfwhale import predict
from tfwhale.contracts.records import load_manifest
from tfwhale.core.config import AugmentConfig, ConfigError, load_config, save_config
from tfwhale.feed.augment import augment_image, flip_as_new_class, training_classes
from tfwhale.feed.data import eval_dataset, train_dataset

# every colour op off: an augmented image is the original or its mirror, nothing else
PLAIN = ["augment.brightness=0", "augment.contrast=0", "augment.saturation=0", "augment.hue=0"]


def test_flip_takes_true_false_and_new_class_only():
    assert load_config().augment.flip is True
    assert load_config(overrides=["augment.flip=false"]).augment.flip is False
    assert load_config(overrides=["augment.flip=new_class"]).augment.flip == "new_class"
    for bad in ("sideways", "1", "0.5"):
        with pytest.raises(ConfigError, match=r"augment\.flip expects bool or one of 'new_class'"):
            load_config(overrides=[f"augment.flip={bad}"])


@pytest.mark.parametrize("mode", ["false", "new_class"])
def test_flip_tta_in_the_config_needs_flip_true(mode):
    with pytest.raises(
        ConfigError, match=f"flip TTA needs augment.flip=true, the run has augment.flip={mode}"
    ):
        load_config(overrides=[f"augment.flip={mode}", "predict.tta_flip=true"])
    assert load_config(overrides=["predict.tta_flip=true"]).predict.tta_flip


def _mirrored_count(cfg: AugmentConfig, image: tf.Tensor, n: int = 40) -> int:
    outputs = [augment_image(image, tf.constant([7, s], tf.int64), cfg).numpy() for s in range(n)]
    mirror = tf.image.flip_left_right(image).numpy()
    assert all(np.array_equal(o, image.numpy()) or np.array_equal(o, mirror) for o in outputs)
    return sum(np.array_equal(o, mirror) for o in outputs)


def test_only_flip_true_mirrors_inside_augment_image():
    image = tf.constant(np.tile(np.arange(8, dtype=np.float32)[None, :, None] * 30, (8, 1, 3)))
    cfg = load_config(overrides=PLAIN).augment
    assert 5 < _mirrored_count(cfg, image) < 35
    assert _mirrored_count(dataclasses.replace(cfg, flip=False), image) == 0
    # new_class mirrors in the pipeline, where the label can follow the image
    assert _mirrored_count(dataclasses.replace(cfg, flip="new_class"), image) == 0


def test_a_mirrored_image_gets_the_mirror_class_and_only_then():
    image = tf.constant(np.tile(np.arange(8, dtype=np.float32)[None, :, None], (8, 1, 3)))
    seen = set()
    for s in range(30):
        out, label = flip_as_new_class(image, tf.constant(3, tf.int32), tf.constant([1, s], tf.int64), 10)
        mirrored = np.array_equal(out.numpy(), image.numpy()[:, ::-1])
        assert int(label) == (13 if mirrored else 3)
        seen.add(mirrored)
    assert seen == {True, False}
    assert training_classes(AugmentConfig(flip="new_class"), 10) == 20
    assert training_classes(AugmentConfig(flip=True), 10) == 10


def test_new_class_training_batches_carry_mirror_labels_on_mirrored_photos(tmp_path):
    records = make_records(tmp_path, n_individuals=6, size=16)
    manifest = load_manifest(records)
    photos: dict[int, list[np.ndarray]] = {}
    batches, _ = eval_dataset(manifest, "train", None, 4)
    for batch in batches.as_numpy_iterator():
        for image, label in zip(batch["image"], batch["label"], strict=True):
            photos.setdefault(int(label), []).append(image)
    cfg = load_config(overrides=[*PLAIN, "augment.flip=new_class", "data.shuffle_buffer=4"])
    labels = []
    for inputs, targets in train_dataset(manifest, [0, 1], cfg, 4, seed=0).take(12):
        assert np.array_equal(inputs["label"].numpy(), targets["label"].numpy())
        for image, label in zip(inputs["image"].numpy(), targets["label"].numpy(), strict=True):
            label = int(label)
            own = photos[label % 6]
            mirrored = any(np.array_equal(image, p[:, ::-1]) for p in own)
            assert mirrored or any(np.array_equal(image, p) for p in own)
            assert (label >= 6) == mirrored  # the mirror class exactly on mirrored photos
            labels.append(label)
    assert any(label >= 6 for label in labels) and any(label < 6 for label in labels)


def test_predict_refuses_flip_tta_for_runs_trained_without_flip_true(tmp_path, caplog):
    records = make_records(tmp_path, n_test=3)
    run_dir = make_run(str(tmp_path / "run"), load_manifest(records))
    for fold in ("fold0", "fold1"):  # each fold's own resolved config, as the trainer writes it
        overrides = ["augment.flip=new_class", "model.embedding_dim=8"]
        save_config(load_config(overrides=overrides), f"{run_dir}/{fold}/config.yaml")
    argv = ["--runs", run_dir, "--records", records, "--out", str(tmp_path / "out"), "--examples", "0"]
    with caplog.at_level(logging.ERROR):
        assert predict.main([*argv, "--tta", "flip"]) == 1
    assert "flip TTA needs augment.flip=true, the run has augment.flip=new_class" in caplog.text
    assert predict.main(argv) == 0


@pytest.mark.slow
def test_new_class_trains_twice_the_classes_and_predict_blends_the_real_ones(tmp_path):
    from tests.run_fixture import build_synthetic_records
    from tfwhale import train
    from tfwhale.contracts.run_folder import TRAIN_MODEL
    from tfwhale.inference.gallery import ARCFACE_LAYER, load_saved_model

    _, records = build_synthetic_records(tmp_path, individuals=8)
    run_dir = str(tmp_path / "run")
    overrides = ["train.epochs=1", "data.batch_size=4", "train.verbose=0", "augment.flip=new_class"]
    argv = ["--config", "tiny_cpu", "--records", records, "--out", run_dir, "--folds", "0"]
    assert train.main(argv + [x for o in overrides for x in ("--set", o)]) == 0
    head = load_saved_model(f"{run_dir}/fold0/{TRAIN_MODEL}").get_layer(ARCFACE_LAYER)
    assert head.n_classes == 2 * len(load_manifest(records).individuals)
    out = str(tmp_path / "out")
    argv = ["--runs", run_dir, "--records", records, "--out", out, "--examples", "0", "--blend", "0.5"]
    assert predict.main([*argv, "--threshold", "0.5"]) == 0
    with open(f"{out}/submission.csv") as f:
        answers = {label for line in list(f)[1:] for label in line.strip().split(",")[1].split()}
    assert answers and not any(label.endswith("_flip") for label in answers)
