"""The record schema: encode -> TFRecord file -> parse round-trips, shard names, manifest checks."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfwhale.contracts import records
from tfwhale.core import files


def _jpeg(size: int = 16, color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_train_example_round_trip(tmp_path):
    path = str(tmp_path / records.train_shard_name(3, 0))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(records.encode_train_example(_jpeg(), "a.jpg", "id7", 7, "orca", 2, 3))
    (parsed,) = list(tf.data.TFRecordDataset(path).map(records.parse_train_example))
    assert parsed["image_name"].numpy() == b"a.jpg"
    assert parsed["individual_id"].numpy() == b"id7"
    assert int(parsed["label"]) == 7
    assert parsed["species"].numpy() == b"orca"
    assert int(parsed["species_label"]) == 2
    assert int(parsed["fold"]) == 3
    image = records.decode_image(parsed["image"], 16).numpy()
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert abs(int(image[..., 0].mean()) - 200) < 8


def test_test_example_round_trip(tmp_path):
    path = str(tmp_path / records.test_shard_name(0))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(records.encode_test_example(_jpeg(), "q.jpg"))
    (parsed,) = list(tf.data.TFRecordDataset(path).map(records.parse_test_example))
    assert parsed["image_name"].numpy() == b"q.jpg"


def test_decode_image_refuses_wrong_size():
    with pytest.raises(tf.errors.InvalidArgumentError):
        records.decode_image(tf.constant(_jpeg(16)), 32)


def test_shard_names_carry_the_fold():
    assert records.shard_fold(records.train_shard_name(4, 12)) == 4
    assert records.shard_fold("gs://b/x/" + records.train_shard_name(0, 1)) == 0
    assert records.shard_fold(records.test_shard_name(2)) is None
    assert records.is_test_shard(records.test_shard_name(2))


def test_manifest_missing_and_foreign_schema(tmp_path):
    with pytest.raises(records.ManifestError, match="unfinished"):
        records.load_manifest(str(tmp_path))
    files.write_json(str(tmp_path / records.MANIFEST_NAME), {"schema_version": 99})
    with pytest.raises(records.ManifestError, match="schema version 99"):
        records.load_manifest(str(tmp_path))
