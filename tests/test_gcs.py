"""gs:// paths for real: TF's native GCS filesystem and google-cloud-storage against one local emulator."""

from __future__ import annotations

import hashlib
import http.client

import numpy as np
import pytest
import tensorflow as tf

from tests.gcs_emulator import (
    TF_IMPORT_TIME_ENV,
    GcsEmulator,
    patched_environ,
    run_gcs_emulator,
    storage_client,
    write_test_certificates,
)
from tfwhale.core import files

pytestmark = pytest.mark.gcs

gfile = tf.io.gfile
LARGE_SIZE = 9 * 2**20 + 123  # over 8 MiB and not a multiple of any power-of-two buffer size


def _random_bytes(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(size)


def _write(path: str, data: bytes) -> None:
    with gfile.GFile(path, "wb") as f:
        f.write(data)


def _read(path: str) -> bytes:
    with gfile.GFile(path, "rb") as f:
        return f.read()


def _object_names(emulator: GcsEmulator, bucket_url: str) -> list[str]:
    bucket_name = bucket_url.removeprefix("gs://")
    return sorted(blob.name for blob in storage_client(emulator).list_blobs(bucket_name))


def test_small_file_round_trip_with_listing(gcs_bucket: str) -> None:
    folder = f"{gcs_bucket}/runs/a"
    gfile.makedirs(folder)
    assert gfile.isdir(folder)
    assert not gfile.exists(f"{folder}/hello.txt")

    _write(f"{folder}/hello.txt", b"hello gcs\n")
    _write(f"{folder}/other.bin", b"\x00\x01")

    assert gfile.exists(f"{folder}/hello.txt")
    assert not gfile.isdir(f"{folder}/hello.txt")
    assert gfile.stat(f"{folder}/hello.txt").length == 10
    assert _read(f"{folder}/hello.txt") == b"hello gcs\n"
    assert sorted(gfile.listdir(folder)) == ["hello.txt", "other.bin"]
    assert gfile.listdir(f"{gcs_bucket}/runs") == ["a/"]  # GCS listings mark subfolders with a slash
    assert gfile.glob(f"{gcs_bucket}/runs/*/*.txt") == [f"{folder}/hello.txt"]


def test_large_file_round_trip_and_ranged_reads(gcs_bucket: str) -> None:
    data = _random_bytes(LARGE_SIZE)
    path = f"{gcs_bucket}/big/blob.bin"

    _write(path, data)

    assert gfile.stat(path).length == LARGE_SIZE
    assert _read(path) == data
    with gfile.GFile(path, "rb") as f:
        f.seek(8 * 2**20 - 5)
        assert f.read(10) == data[8 * 2**20 - 5 : 8 * 2**20 + 5]
    assert files.sha256(path) == hashlib.sha256(data).hexdigest()


def test_rename_overwrites_and_remove_deletes(gcs_bucket: str) -> None:
    source, target = f"{gcs_bucket}/d/new.txt", f"{gcs_bucket}/d/old.txt"
    _write(source, b"new contents")
    _write(target, b"old")

    with pytest.raises(tf.errors.AlreadyExistsError):
        gfile.rename(source, target, overwrite=False)
    gfile.rename(source, target, overwrite=True)

    assert not gfile.exists(source)
    assert _read(target) == b"new contents"
    assert gfile.stat(target).length == len(b"new contents")

    gfile.remove(target)
    assert not gfile.exists(target)
    with pytest.raises(tf.errors.NotFoundError):
        gfile.remove(target)


def test_rmtree_removes_files_and_directory_markers(gcs_server: GcsEmulator, gcs_bucket: str) -> None:
    gfile.makedirs(f"{gcs_bucket}/tree/empty")
    _write(f"{gcs_bucket}/tree/x/1.txt", b"1")
    _write(f"{gcs_bucket}/keep.txt", b"k")
    # makedirs leaves zero-byte "folder/" marker objects; plain writes create no markers.
    assert _object_names(gcs_server, gcs_bucket) == ["keep.txt", "tree/", "tree/empty/", "tree/x/1.txt"]

    gfile.rmtree(f"{gcs_bucket}/tree")

    assert not gfile.exists(f"{gcs_bucket}/tree")
    assert _object_names(gcs_server, gcs_bucket) == ["keep.txt"]


def test_folder_rename_moves_every_object(gcs_server: GcsEmulator, gcs_bucket: str) -> None:
    gfile.makedirs(f"{gcs_bucket}/staging/sub")
    _write(f"{gcs_bucket}/staging/sub/model.weights.h5", b"weights")

    gfile.rename(f"{gcs_bucket}/staging", f"{gcs_bucket}/final")

    assert _object_names(gcs_server, gcs_bucket) == ["final/", "final/sub/", "final/sub/model.weights.h5"]
    assert _read(f"{gcs_bucket}/final/sub/model.weights.h5") == b"weights"


@pytest.mark.parametrize("compression", ["", "GZIP"])
def test_tfrecord_write_then_dataset_read(gcs_bucket: str, compression: str) -> None:
    records = [b"", b"first", _random_bytes(3 * 2**20, seed=1), *(f"rec-{i}".encode() for i in range(100))]
    path = f"{gcs_bucket}/shards/train-fold0-0000.tfrec"
    options = tf.io.TFRecordOptions(compression_type=compression)

    with tf.io.TFRecordWriter(path, options) as writer:
        for record in records:
            writer.write(record)

    dataset = tf.data.TFRecordDataset([path], compression_type=compression)
    assert [tensor.numpy() for tensor in dataset] == records


def test_tfwhale_io_json_and_sha256(gcs_bucket: str) -> None:
    manifest = {"schema_version": 1, "shards": ["train-fold0-0000.tfrec"], "sizes": [3, 4.5]}
    path = files.join(gcs_bucket, "out", "manifest.json")

    files.write_json(path, manifest)
    files.write_json(path, {**manifest, "schema_version": 2})  # an atomic overwrite of an existing file

    assert files.read_json(path) == {**manifest, "schema_version": 2}
    assert files.listdir(files.dirname(path)) == ["manifest.json"]  # no temp file left behind
    assert files.sha256(path) == hashlib.sha256(files.read_bytes(path)).hexdigest()


def test_both_clients_see_one_store(gcs_server: GcsEmulator, gcs_bucket: str) -> None:
    _write(f"{gcs_bucket}/from_tf/a.txt", b"written by tf")
    bucket = storage_client(gcs_server).bucket(gcs_bucket.removeprefix("gs://"))
    bucket.blob("from_gcs/b.txt").upload_from_string(b"written by google-cloud-storage")

    assert _object_names(gcs_server, gcs_bucket) == ["from_gcs/b.txt", "from_tf/a.txt"]
    assert bucket.blob("from_tf/a.txt").download_as_bytes() == b"written by tf"
    assert _read(f"{gcs_bucket}/from_gcs/b.txt") == b"written by google-cloud-storage"
    assert gfile.listdir(gcs_bucket) == ["from_gcs/", "from_tf/"]


def test_tf_verifies_the_proxy_certificate_and_gives_up_quickly(gcs_bucket: str, tmp_path) -> None:
    # A CA that did not sign the proxy's certificate: TF must refuse the connection, and give up after
    # the retry count conftest set before TensorFlow was imported (TF's default is 10 retries, ~3 min).
    unrelated_ca = write_test_certificates(str(tmp_path))[0]
    retries = TF_IMPORT_TIME_ENV["GCS_RETRY_CONFIG_MAX_RETRIES"]
    with (
        patched_environ({"CURL_CA_BUNDLE": unrelated_ca}),
        pytest.raises(tf.errors.AbortedError, match=f"All {retries} retry attempts failed.*SSL"),
    ):
        gfile.exists(f"{gcs_bucket}/anything")
    assert not gfile.exists(f"{gcs_bucket}/anything")  # the right CA works again


def test_proxy_tunnels_only_to_google_hosts(gcs_server: GcsEmulator) -> None:
    host, port = gcs_server.proxy_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.set_tunnel("example.com", 443)
    with pytest.raises(OSError, match="403"):
        connection.connect()
    connection.close()


def test_emulator_start_timeout_fails_clearly() -> None:
    with pytest.raises(RuntimeError, match="did not start within"), run_gcs_emulator(startup_timeout_s=0.001):
        pass
