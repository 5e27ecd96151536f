"""Input pipeline: fold selection, static batches, PK sampling, ordered complete eval passes, augmentation."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.records_fixture import label_color, make_records
from tfwhale.contracts import records
from tfwhale.contracts.records import ManifestError
from tfwhale.core import files
from tfwhale.core.config import AugmentConfig, ConfigError, load_config
from tfwhale.feed import augment, data

SIZE = 32
ALL_OFF = AugmentConfig(flip=False, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    # 6 individuals with 4, 1, 3, 5, 2, 4 photos; even labels in fold 0 (9 photos), odd in fold 1 (10)
    return records.load_manifest(make_records(tmp_path_factory.mktemp("data")))


def _cfg(*overrides):
    return load_config(None, [f"data.image_size={SIZE}", "data.shuffle_buffer=32", *overrides])


def _label_of(name: str) -> int:
    return int(name[1:4])  # names are w{label:03d}_{photo:02d}.jpg


def test_shards_of_a_fold_hold_only_that_fold(manifest):
    for fold in (0, 1):
        paths = data.shard_paths(manifest, "train", [fold])
        folds = [int(records.parse_train_example(s)["fold"]) for s in tf.data.TFRecordDataset(paths)]
        assert len(folds) == manifest.count("train", [fold]) and set(folds) == {fold}


def test_train_batches_are_static_and_come_from_the_requested_folds(manifest):
    dataset = data.train_dataset(manifest, [1], _cfg(), global_batch=4, seed=3)
    inputs, labels = dataset.element_spec
    assert set(inputs) == {"image", "label"} and set(labels) == {"label", "species_label"}
    assert inputs["image"].shape == (4, SIZE, SIZE, 3) and inputs["image"].dtype == tf.uint8
    assert all(spec.dtype == tf.int32 and spec.shape == (4,) for spec in [inputs["label"], *labels.values()])
    seen = set()
    for batch_inputs, batch_labels in dataset.take(8):  # 32 examples: the 10 of fold 1 repeat
        label = batch_inputs["label"].numpy()
        np.testing.assert_array_equal(label, batch_labels["label"].numpy())
        np.testing.assert_array_equal(label % 2, batch_labels["species_label"].numpy())
        seen |= set(label.tolist())
    assert seen == {1, 3, 5}  # every individual of fold 1, none of fold 0


def test_same_seed_same_training_batches_when_deterministic(manifest):
    cfg = _cfg("data.deterministic=true", "augment.rotation=10")
    first, second, other = (
        [b[0]["image"].numpy() for b in data.train_dataset(manifest, [0, 1], cfg, 4, seed=s).take(3)]
        for s in (1, 1, 2)
    )
    np.testing.assert_array_equal(np.stack(first), np.stack(second))
    assert not np.array_equal(np.stack(first), np.stack(other))


def test_val_loss_batches_are_unaugmented_full_and_finite(manifest):
    cfg = _cfg("augment.rotation=30", "augment.erasing_prob=1")  # must not apply here
    batches = list(data.val_loss_dataset(manifest, [1], cfg, global_batch=4).as_numpy_iterator())
    assert len(batches) == 2  # 10 examples of fold 1 // 4; the rest is dropped for static shapes
    rows, _, _ = _eval_rows(manifest, "train", [1], batch=4)
    np.testing.assert_array_equal(np.concatenate([b[0]["image"] for b in batches]), rows["image"][:8])
    np.testing.assert_array_equal(np.concatenate([b[1]["label"] for b in batches]), rows["label"][:8])
    small = list(data.val_loss_dataset(manifest, [1], cfg, global_batch=16).as_numpy_iterator())
    assert len(small) == 1 and small[0][0]["image"].shape[0] == 16  # a fold smaller than a batch repeats


def test_pk_batches_hold_p_individuals_with_k_photos_each(manifest):
    cfg = _cfg("data.sampler=pk", "data.ids_per_batch=2", "data.photos_per_id=3", "data.batch_size=6")
    dataset = data.train_dataset(manifest, [0, 1], cfg, global_batch=12, seed=5)  # 2 replicas x 6
    drawn = set()
    for inputs, _ in dataset.take(10):
        labels = inputs["label"].numpy()
        for replica_batch in labels.reshape(2, 6):
            values, counts = np.unique(replica_batch, return_counts=True)
            assert len(values) == 2 and counts.tolist() == [3, 3]
            drawn |= set(values.tolist())
    assert 1 not in drawn  # whale_001 has one photo, below data.pk_min_photos=2
    assert drawn == {0, 2, 3, 4, 5}


def test_pk_sampler_errors(manifest):
    cfg = _cfg("data.sampler=pk", "data.ids_per_batch=2", "data.photos_per_id=3", "data.batch_size=6")
    with pytest.raises(ConfigError, match="global batch 8 is not a multiple of P x K = 6"):
        data.train_dataset(manifest, [0], cfg, global_batch=8, seed=0)
    greedy = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pk_min_photos=5))
    with pytest.raises(
        ConfigError, match=r"1 individuals .*pk_min_photos=5 photos; data\.ids_per_batch=2 needs 2"
    ):
        data.train_dataset(manifest, [0, 1], greedy, global_batch=6, seed=0)


def test_image_size_mismatch_names_both_sizes(manifest):
    with pytest.raises(ConfigError, match=r"data\.image_size=64 .* are 32 px"):
        data.train_dataset(manifest, [0], load_config(None, ["data.image_size=64"]), 4, seed=0)


def test_missing_shards_and_folds_are_named(tmp_path):
    manifest = records.load_manifest(make_records(tmp_path))
    with pytest.raises(ValueError, match=r"folds \[2\] do not exist: .* has folds 0\.\.1"):
        data.shard_paths(manifest, "train", [0, 2])
    files.remove(files.join(manifest.root, records.train_shard_name(1, 1)))
    with pytest.raises(ManifestError, match=r"1 shard\(s\) .* missing: .*train-fold1-0001\.tfrec"):
        data.train_dataset(manifest, [0, 1], _cfg(), 4, seed=0)
    data.shard_paths(manifest, "train", [0])  # the other fold is still readable
    shards = [s for s in manifest.data["shards"] if s.get("fold") != 1]
    no_fold_1 = records.Manifest(manifest.root, {**manifest.data, "shards": shards})
    with pytest.raises(ManifestError, match=r"no shards for train folds \[1\]"):
        data.eval_dataset(no_fold_1, "train", [1], 4)


def _eval_rows(manifest, split, folds, batch):
    dataset, count = data.eval_dataset(manifest, split, folds, batch)
    batches = list(dataset.as_numpy_iterator())
    rows = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
    return rows, count, len(batches)


def test_eval_pass_is_complete_ordered_and_padded(manifest):
    rows, count, n_batches = _eval_rows(manifest, "train", [0, 1], batch=4)
    assert count == 19 and n_batches == 5  # 19 examples -> 4 full batches + 3 real rows and 1 pad
    names = [n.decode() for n in rows["image_name"][:count]]
    assert len(set(names)) == 19
    assert [_label_of(n) for n in names] == rows["label"][:count].tolist()
    assert [f"whale_{_label_of(n):03d}" for n in names] == [i.decode() for i in rows["individual_id"][:count]]
    assert rows["label"][count:].tolist() == [-1] and rows["image_name"][count:].tolist() == [b""]
    again, _, _ = _eval_rows(manifest, "train", [0, 1], batch=4)
    np.testing.assert_array_equal(rows["image_name"], again["image_name"])
    np.testing.assert_array_equal(rows["image"], again["image"])  # no augmentation, same order


def test_eval_of_the_test_split(manifest):
    rows, count, n_batches = _eval_rows(manifest, "test", None, batch=3)
    assert (count, n_batches) == (5, 2)
    assert sorted(n.decode() for n in rows["image_name"][:count]) == [f"q{i:03d}.jpg" for i in range(5)]
    assert set(rows) == {"image", "image_name"}


def _mean_colour_model():
    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.GlobalAveragePooling2D()])


def test_embed_keeps_names_aligned_with_embeddings(manifest):
    embedded = data.embed(_mean_colour_model(), manifest, "train", [0, 1], batch=4)
    embeddings, names, ids, species = embedded
    assert embedded.ids is ids and embedded.embeddings is embeddings
    assert embeddings.shape == (19, 3) and len(names) == len(ids) == len(species) == 19
    expected_red = [label_color(_label_of(n)) for n in names]
    np.testing.assert_allclose(embeddings[:, 0], expected_red, atol=6)  # labels' colours are 30 apart
    assert ids == [f"whale_{_label_of(n):03d}" for n in names]
    flipped, flipped_names, _, _ = data.embed(
        _mean_colour_model(), manifest, "train", [0, 1], batch=4, flip=True
    )
    assert flipped_names == names
    np.testing.assert_allclose(flipped, embeddings, atol=1e-3)  # a mirror keeps the mean colour
    test_embeddings, test_names, test_ids, _ = data.embed(
        _mean_colour_model(), manifest, "test", None, batch=4
    )
    assert test_embeddings.shape == (5, 3) and len(test_names) == 5 and test_ids is None


def test_fold_models_embedding_the_same_records_read_their_names_once(manifest, monkeypatch):
    reads = []
    read_metadata = data._read_metadata
    monkeypatch.setattr(data, "_read_metadata", lambda *args: reads.append(args[1:]) or read_metadata(*args))
    monkeypatch.setattr(data, "_METADATA", {})
    first = data.embed(_mean_colour_model(), manifest, "train", [1], batch=4)
    first.names.append("changed by a caller")
    second = data.embed(_mean_colour_model(), manifest, "train", [1], batch=4)
    assert reads == [("train", [1])] and len(second.names) == 10  # the second model reused the first pass
    data.embed(_mean_colour_model(), manifest, "train", [0], batch=4)
    assert reads == [("train", [1]), ("train", [0])]  # other folds: their own pass


def test_embed_refuses_a_manifest_that_miscounts(manifest):
    shards = [{**s, "count": s["count"] + 1} if s["split"] == "test" else s for s in manifest.data["shards"]]
    wrong = records.Manifest(manifest.root, {**manifest.data, "shards": shards})
    with pytest.raises(ManifestError, match=r"manifest counts 7 test examples .* shards hold 5"):
        data.embed(_mean_colour_model(), wrong, "test", None, batch=4)


# augmentation -------------------------------------------------------------------------------------

IMAGE = tf.constant(np.random.default_rng(0).uniform(0, 255, (SIZE, SIZE, 3)), tf.float32)
SEED = tf.constant([7, 11], tf.int64)
OPS_ON = {
    "flip": {"flip": True},
    "crop": {"random_resized_crop": True, "crop_scale": (0.3, 0.5)},
    "rotation": {"rotation": 30.0},
    "shear": {"shear": 20.0},
    "brightness": {"brightness": 0.3},
    "contrast": {"contrast": 0.5},
    "saturation": {"saturation": 0.5},
    "hue": {"hue": 0.2},
    "grayscale": {"grayscale_prob": 1.0},
    "blur": {"blur_prob": 1.0},
    "erasing": {"erasing_prob": 1.0},
}


def test_all_ops_off_is_the_identity():
    np.testing.assert_array_equal(augment.augment_image(IMAGE, SEED, ALL_OFF).numpy(), IMAGE.numpy())
    uint8 = tf.cast(IMAGE, tf.uint8)
    np.testing.assert_array_equal(augment.augment_image(uint8, SEED, ALL_OFF).numpy(), uint8.numpy())


@pytest.mark.parametrize("op", sorted(OPS_ON))
def test_each_op_changes_the_image_and_keeps_shape_and_range(op):
    cfg = dataclasses.replace(ALL_OFF, **OPS_ON[op])
    outputs = [augment.augment_image(IMAGE, tf.constant([s, 3], tf.int64), cfg).numpy() for s in range(4)]
    for out in outputs:
        assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 255
    # flip fires with p=0.5, so look at several seeds; every other op changes the image every time
    changed = [not np.allclose(out, IMAGE.numpy(), atol=0.5) for out in outputs]
    assert any(changed) if op == "flip" else all(changed)
    again = augment.augment_image(IMAGE, tf.constant([0, 3], tf.int64), cfg).numpy()
    np.testing.assert_array_equal(again, outputs[0])  # stateless: same seed, same result


def test_probability_zero_ops_and_flip_geometry():
    flipped = augment.flip(IMAGE, tf.constant([1, 1], tf.int64))
    mirrored = np.array_equal(flipped.numpy(), IMAGE.numpy()[:, ::-1])
    assert mirrored or np.array_equal(flipped.numpy(), IMAGE.numpy())
    np.testing.assert_array_equal(
        augment.erase(IMAGE, SEED, 0.0, (0.1, 0.2), (0.5, 2.0)).numpy(), IMAGE.numpy()
    )
    np.testing.assert_array_equal(augment.blur(IMAGE, SEED, 0.0, (1.0, 2.0)).numpy(), IMAGE.numpy())
    gray = augment.grayscale(IMAGE, SEED, 1.0).numpy()
    np.testing.assert_allclose(gray[..., 0], gray[..., 2])


def test_image_size_left_unset_is_the_records_size(manifest):
    cfg = load_config(None, ["data.shuffle_buffer=32"])
    assert cfg.data.image_size is None
    assert data.with_records_image_size(cfg, manifest).data.image_size == manifest.image_size == SIZE
    batch = next(iter(data.train_dataset(manifest, [0], cfg, 4, seed=0)))
    assert batch[0]["image"].shape == (4, SIZE, SIZE, 3)
