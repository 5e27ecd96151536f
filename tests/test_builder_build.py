"""build-tfrecords end to end: tf.data round trip, rejects, resume, changed settings, verify, workers."""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from tfrecords_builder import cli
from tfwhale.contracts import records
from tfwhale.core import files

SPECIES = ("beluga", "kiler_whale", "humpback_whale")  # kiler_whale: a real Kaggle typo, fixed on reading
N_TRAIN, N_TEST, N_INDIVIDUALS = 30, 7, 6


def save_photo(path: Path, seed: int, size=(120, 80)) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.full((size[1], size[0], 3), rng.integers(0, 255, 3), np.uint8)
    pixels[10:60, 20:90] = rng.integers(0, 255, 3)
    Image.fromarray(pixels).save(path, quality=90)


def make_kaggle(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    """DIR/train.csv (with a Detic-style box column), DIR/train_images/, DIR/test_images/."""
    (root / "train_images").mkdir(parents=True)
    (root / "test_images").mkdir()
    rows = []
    for i in range(n_train):
        name = f"tr{i:03d}.jpg"
        save_photo(root / "train_images" / name, i)
        box = "15 8 100 70" if i % 3 else ""
        rows.append((name, SPECIES[i % N_INDIVIDUALS % 3], f"whale{i % N_INDIVIDUALS}", box))
    pd.DataFrame(rows, columns=["image", "species", "individual_id", "box"]).to_csv(
        root / "train.csv", index=False
    )
    for i in range(n_test):
        save_photo(root / "test_images" / f"te{i:03d}.jpg", 1000 + i)
    return root


def build(data: Path, out: Path, *extra: str) -> int:
    argv = [
        "--data",
        str(data),
        "--out",
        str(out),
        "--size",
        "48",
        "--images-per-shard",
        "4",
        "--workers",
        "1",
    ]
    return cli.main([*argv, *extra])


def read_train(out: Path) -> list[dict]:
    manifest = records.load_manifest(str(out))
    examples = []
    for path in manifest.shard_paths("train"):
        for serialized in tf.data.TFRecordDataset(path):
            example = records.parse_train_example(serialized)
            image = records.decode_image(example["image"], manifest.image_size)
            examples.append(
                {
                    "shard": os.path.basename(path),
                    "image_name": example["image_name"].numpy().decode(),
                    "individual_id": example["individual_id"].numpy().decode(),
                    "label": int(example["label"]),
                    "species": example["species"].numpy().decode(),
                    "species_label": int(example["species_label"]),
                    "fold": int(example["fold"]),
                    "shape": tuple(image.shape),
                }
            )
    return examples


def read_test_names(out: Path) -> list[str]:
    manifest = records.load_manifest(str(out))
    dataset = tf.data.TFRecordDataset(manifest.shard_paths("test")).map(records.parse_test_example)
    return [example["image_name"].numpy().decode() for example in dataset]


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.glob("*.tfrec"))}


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory) -> Path:
    return make_kaggle(tmp_path_factory.mktemp("kaggle"))


@pytest.fixture(scope="module")
def good_build(kaggle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("records")
    assert build(kaggle, out) == cli.EXIT_OK
    return out


def test_round_trip_through_tf_data(kaggle, good_build):
    manifest = records.load_manifest(str(good_build))
    examples = read_train(good_build)
    table = pd.read_csv(kaggle / "train.csv")
    assert len(examples) == manifest.count("train") == N_TRAIN
    assert sorted(e["image_name"] for e in examples) == sorted(table["image"])
    assert manifest.individuals == [f"whale{i}" for i in range(N_INDIVIDUALS)]
    assert manifest.species == ["beluga", "humpback_whale", "killer_whale"]
    assert manifest.photo_counts == [5] * N_INDIVIDUALS
    for example in examples:
        assert example["shape"] == (48, 48, 3)
        assert manifest.individuals[example["label"]] == example["individual_id"]
        assert manifest.species[example["species_label"]] == example["species"]
        assert example["fold"] == records.shard_fold(example["shard"])  # fold in the name == fold inside
    by_image = {e["image_name"]: e for e in examples}
    for image, individual in zip(table["image"], table["individual_id"], strict=True):
        assert by_image[image]["individual_id"] == individual
    fold_counts = np.bincount([e["fold"] for e in examples], minlength=5)
    assert manifest.data["folds"]["counts"] == {str(k): int(n) for k, n in enumerate(fold_counts)}
    assert all(0 < shard["count"] <= 4 for shard in manifest.data["shards"])
    assert sorted(read_test_names(good_build)) == [f"te{i:03d}.jpg" for i in range(N_TEST)]
    assert manifest.count("test") == N_TEST
    assert manifest.data["no_box"] == N_TRAIN // 3 + N_TEST
    assert list(pd.read_csv(good_build / records.REJECTS_NAME).columns) == ["image", "row", "field", "reason"]


def test_manifest_records_how_it_was_built(kaggle, good_build):
    data = json.loads((good_build / records.MANIFEST_NAME).read_text())
    assert data["crop"]["box_source"] == "box column of the input CSVs"
    assert data["crop"]["enlarge"] == 1.2 and data["crop"]["resize_mode"] == "square"
    assert data["rejects"] == {"count": 0, "by_reason": {}, "file": "rejects.csv"}
    assert data["sources"]["train_csv"]["path"] == str(kaggle / "train.csv")
    for shard in data["shards"]:
        path = good_build / shard["name"]
        assert shard["bytes"] == path.stat().st_size
        assert shard["sha256"] == files.sha256(str(path))


BAD_ROWS = [  # (csv line, image, box); the good rows come first at lines 2..N_TRAIN+1
    ("gone.jpg", "", "image"),  # listed but missing
    ("trunc.jpg", "", "image"),  # truncated JPEG
    ("text.jpg", "", "image"),  # a text file named .jpg
    ("tr000.jpg", "", "image"),  # duplicate of line 2
    ("../x.jpg", "", "image"),
    ("/etc/passwd", "", "image"),
    ("far.jpg", "500 500 600 600", None),  # box outside the image: built uncropped
    ("flat.jpg", "10 10 10 40", None),  # zero-area box: built uncropped
]


def test_bad_inputs_become_rejects_and_the_rest_is_built(tmp_path, capsys):
    data = make_kaggle(tmp_path / "data")
    images = data / "train_images"
    full = (images / "tr001.jpg").read_bytes()
    (images / "trunc.jpg").write_bytes(full[: len(full) // 2])
    (images / "text.jpg").write_text("this is not a photo\n")
    save_photo(images / "far.jpg", 7)
    save_photo(images / "flat.jpg", 8)
    with open(data / "train.csv", "a") as csv:
        for image, box, _ in BAD_ROWS:
            csv.write(f"{image},beluga,whale0,{box}\n")
    out = tmp_path / "out"
    assert build(data, out) == cli.EXIT_REJECTS
    rejects = pd.read_csv(out / records.REJECTS_NAME)
    expected = {
        (image, N_TRAIN + 2 + line, field) for line, (image, _, field) in enumerate(BAD_ROWS) if field
    }
    assert set(zip(rejects["image"], rejects["row"], rejects["field"], strict=True)) == expected
    reasons = dict(zip(rejects["image"], rejects["reason"], strict=True))
    assert reasons["trunc.jpg"].startswith("cannot decode image")
    assert reasons["text.jpg"].startswith("cannot decode image")
    manifest = records.load_manifest(str(out))
    assert manifest.count("train") == N_TRAIN + 2
    # whale0: 5 photos + far.jpg + flat.jpg; the duplicate row and the undecodable photos do not count.
    assert manifest.photo_counts == [7] + [5] * (N_INDIVIDUALS - 1)
    assert manifest.data["box_fallbacks"] == {"box outside image": 1, "box has zero area": 1}
    assert manifest.data["rejects"]["count"] == 6
    assert {"far.jpg", "flat.jpg"} <= {e["image_name"] for e in read_train(out)}
    summary = capsys.readouterr().out
    assert "rejected: 6 image(s)" in summary and "box outside image: 1" in summary


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("image,specie,individual_id\na.jpg,beluga,w1\n", "expected columns ['image', 'species'"),
        ("", "empty"),
    ],
    ids=["misspelt-column", "empty-csv"],
)
def test_fatal_input_errors_exit_1_and_write_nothing(tmp_path, caplog, csv_text, message):
    data = make_kaggle(tmp_path / "data", n_train=2)
    (data / "train.csv").write_text(csv_text)
    out = tmp_path / "out"
    assert build(data, out) == cli.EXIT_FATAL
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(data / "train.csv") in errors[0] and message in errors[0]
    assert not (out / records.MANIFEST_NAME).exists()


def test_resume_reuses_finished_shards_and_matches_a_clean_build(kaggle, good_build, tmp_path, caplog):
    out = tmp_path / "out"
    assert build(kaggle, out) == cli.EXIT_OK
    # Simulate an interrupted run: no manifest yet, one shard never committed, a stray temp file.
    (out / records.MANIFEST_NAME).unlink()
    (out / "train-fold2-0000.tfrec").unlink()
    stray = out / "train-fold3-0001.tfrec.tmp-0badf00d"
    stray.write_bytes(b"half a shard")
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrec")}
    caplog.set_level(logging.INFO, logger="tfrecords_builder.writer")
    assert build(kaggle, out) == cli.EXIT_OK
    assert f"reusing {len(kept)} finished shard(s)" in caplog.text
    assert "building 1 shard(s), 3 images" in caplog.text
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept
    assert not stray.exists()
    assert shard_bytes(out) == shard_bytes(good_build)
    rebuilt = records.load_manifest(str(out)).data
    assert rebuilt["shards"] == records.load_manifest(str(good_build)).data["shards"]


def test_changed_setting_needs_overwrite(kaggle, tmp_path, caplog):
    out = tmp_path / "out"
    assert build(kaggle, out, "--no-test") == cli.EXIT_OK
    assert build(kaggle, out, "--no-test", "--quality", "70") == cli.EXIT_FATAL
    assert "jpeg_quality 90 -> 70" in caplog.text and "--overwrite" in caplog.text
    assert records.load_manifest(str(out)).data["crop"]["jpeg_quality"] == 90  # the old build is intact
    assert build(kaggle, out, "--no-test", "--quality", "70", "--overwrite") == cli.EXIT_OK
    assert records.load_manifest(str(out)).data["crop"]["jpeg_quality"] == 70


def test_changed_input_needs_overwrite(kaggle, tmp_path, caplog):
    data = make_kaggle(tmp_path / "data")
    out = tmp_path / "out"
    assert build(data, out, "--no-test") == cli.EXIT_OK
    table = pd.read_csv(data / "train.csv", keep_default_na=False)
    table.loc[0, "box"] = "0 0 50 50"
    table.to_csv(data / "train.csv", index=False)
    assert build(data, out, "--no-test") == cli.EXIT_FATAL
    assert "the input changed" in caplog.text and "--overwrite" in caplog.text
    assert records.load_manifest(str(out)).count("train") == N_TRAIN  # the finished build is untouched


def test_verify_passes_a_good_build_and_finds_damage(good_build, tmp_path, capsys):
    assert cli.main(["verify", str(good_build)]) == cli.EXIT_OK
    assert f"OK, 12 shard(s), {N_TRAIN} train and {N_TEST} test images" in capsys.readouterr().out
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in good_build.iterdir():
        if path.is_file():
            (damaged / path.name).write_bytes(path.read_bytes())
    shard = damaged / "train-fold1-0000.tfrec"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    (damaged / "test-0001.tfrec").unlink()
    (damaged / "test-0009.tfrec").write_bytes(b"")
    assert cli.main(["verify", str(damaged)]) == cli.EXIT_FATAL
    report = capsys.readouterr().out
    assert "train-fold1-0000.tfrec: sha256 differs" in report
    assert "train-fold1-0000.tfrec: record" in report  # the flipped byte also breaks a record's CRC
    assert "test-0001.tfrec: listed in the manifest but missing" in report
    assert "test-0009.tfrec: shard file not listed" in report
    assert "train-fold0-0000.tfrec" not in report


def test_two_workers_write_the_same_bytes_as_one(kaggle, good_build, tmp_path):
    out = tmp_path / "out"
    assert build(kaggle, out, "--workers", "2") == cli.EXIT_OK
    assert shard_bytes(out) == shard_bytes(good_build)


def test_boxes_csv_overrides_the_box_column(tmp_path):
    data = make_kaggle(tmp_path / "data", n_train=10, n_test=2)
    pixels = np.zeros((80, 120, 3), np.uint8)
    pixels[:, :60] = (255, 0, 0)
    pixels[:, 60:] = (0, 200, 0)
    Image.fromarray(pixels).save(data / "train_images" / "tr001.jpg", quality=95)  # CSV box: left (red)
    table = pd.read_csv(data / "train.csv", keep_default_na=False)
    table.loc[1, "box"] = "5 10 50 70"
    table.to_csv(data / "train.csv", index=False)
    yolo = pd.DataFrame({"image": ["tr001.jpg"], "bbox": ["[[70 10 115 70]]"], "conf": ["[0.9]"]})
    yolo.to_csv(tmp_path / "yolo.csv", index=False)
    out = tmp_path / "out"
    assert build(data, out, "--boxes", str(tmp_path / "yolo.csv"), "--enlarge", "1.0") == cli.EXIT_OK
    manifest = records.load_manifest(str(out))
    assert manifest.data["crop"]["box_source"] == "--boxes yolo.csv"
    assert manifest.data["no_box"] == 10 + 2 - 1  # --boxes covers only tr001.jpg; CSV boxes are ignored
    for serialized in tf.data.TFRecordDataset(manifest.shard_paths("train")):
        example = records.parse_train_example(serialized)
        if example["image_name"].numpy() == b"tr001.jpg":
            pixels = tf.io.decode_jpeg(example["image"]).numpy().reshape(-1, 3).mean(axis=0)
            assert pixels[1] > 180 and pixels[0] < 30  # green: the --boxes box, not the CSV's red one


def test_test_list_from_sample_submission_and_no_test(tmp_path):
    data = make_kaggle(tmp_path / "data", n_train=10, n_test=5)
    (data / "sample_submission.csv").write_text("image,predictions\nte001.jpg,x\nte003.jpg,x\n")
    out = tmp_path / "out"
    assert build(data, out) == cli.EXIT_OK
    assert sorted(read_test_names(out)) == ["te001.jpg", "te003.jpg"]
    train_only = tmp_path / "train_only"
    assert build(data, train_only, "--no-test") == cli.EXIT_OK
    manifest = records.load_manifest(str(train_only))
    assert manifest.shards("test") == [] and manifest.count("train") == 10


@pytest.mark.gcs
def test_gs_input_and_output_build_resume_and_verify(kaggle, good_build, gcs_bucket, caplog):
    """Test photos read from gs:// by the parent, shards staged locally and uploaded, checked, committed."""
    for path in sorted((kaggle / "test_images").iterdir()):
        tf.io.gfile.copy(str(path), f"{gcs_bucket}/in/test_images/{path.name}")
    out = f"{gcs_bucket}/records"
    argv = [
        "--train-csv", str(kaggle / "train.csv"), "--train-images", str(kaggle / "train_images"),
        "--test-images", f"{gcs_bucket}/in/test_images", "--out", out,
        "--size", "48", "--images-per-shard", "4", "--workers", "1",
    ]  # fmt: skip
    assert cli.main(argv) == cli.EXIT_OK
    remote = {name: files.read_bytes(f"{out}/{name}") for name in shard_bytes(good_build)}
    assert remote == shard_bytes(good_build)
    files.remove(f"{out}/test-0001.tfrec")
    files.remove(f"{out}/{records.MANIFEST_NAME}")
    caplog.set_level(logging.INFO, logger="tfrecords_builder.writer")
    assert cli.main(argv) == cli.EXIT_OK
    assert "reusing 11 finished shard(s)" in caplog.text
    assert not [name for name in files.listdir(out) if ".tmp-" in name]
    assert cli.main(["verify", out]) == cli.EXIT_OK
