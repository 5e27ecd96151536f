"""build-tfrecords local features: one file per shard beside it (rows = the shard's records), sha256 and
counts in manifest.json, verify covering them, and add-local-features (resumable) for builds without."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_builder_build import build, make_kaggle, read_test_names, read_train
from tfrecords_builder import cli, local_features, manifest
from tfwhale.contracts import records
from tfwhale.contracts.local_features import load_feature_set
from tfwhale.imaging.crop_box import parse_box_text
from tfwhale.matching.features import SiftSettings
from tfwhale.matching.photo import photo_features

BLANK = "tr004.jpg"  # made one flat grey: SIFT finds no keypoint in it


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory) -> Path:
    root = make_kaggle(tmp_path_factory.mktemp("kaggle"))
    Image.new("RGB", (120, 80), (128, 128, 128)).save(root / "train_images" / BLANK, quality=90)
    return root


@pytest.fixture(scope="module")
def with_features(kaggle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("with")
    assert build(kaggle, out, "--local-features") == cli.EXIT_OK
    return out


@pytest.fixture(scope="module")
def without(kaggle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("without")
    assert build(kaggle, out, "--no-local-features") == cli.EXIT_OK
    return out


def _manifest(out: Path) -> dict:
    return json.loads((out / records.MANIFEST_NAME).read_text())


def test_each_shard_has_its_feature_file_listed_with_counts_and_sha256(with_features, kaggle):
    data = _manifest(with_features)
    section = data["local_features"]
    assert section["sift"] == {**vars(SiftSettings())}
    assert section["photos"] == data["train_count"] + data["test_count"]
    assert section["files"] == len(data["shards"])
    total_keypoints = 0
    for shard in data["shards"]:
        entry = shard["features"]
        path = with_features / entry["name"]
        assert entry["name"] == shard["name"].replace(".tfrec", ".features.npz")
        assert entry["bytes"] == path.stat().st_size
        features = load_feature_set(str(path), entry["sha256"])  # the sha256 checks out
        assert entry["photos"] == shard["count"] == len(features)
        assert entry["keypoints"] == len(features.descriptors)
        total_keypoints += entry["keypoints"]
    assert section["keypoints"] == total_keypoints > 0
    # rows follow the shards' records, train then test
    names = [
        n for s in data["shards"] for n in load_feature_set(str(with_features / s["features"]["name"])).names
    ]
    assert names == [e["image_name"] for e in read_train(with_features)] + read_test_names(with_features)


def test_features_are_what_the_query_path_takes_from_the_original_photo(with_features, kaggle):
    """One code path: a record's features equal matching.photo's of the original photo and its box."""
    manifest = records.load_manifest(str(with_features))
    shard = manifest.shards("train")[0]
    features = load_feature_set(str(with_features / shard["features"]["name"]))
    table = {
        row.split(",")[0]: row.split(",")[3] for row in (kaggle / "train.csv").read_text().splitlines()[1:]
    }
    for i, name in enumerate(features.names):
        mine = photo_features((kaggle / "train_images" / name).read_bytes(), parse_box_text(table[name]),
                              manifest.image_settings, SiftSettings())  # fmt: skip
        np.testing.assert_array_equal(mine.descriptors, features[i].descriptors)
        np.testing.assert_array_equal(mine.keypoints, features[i].keypoints)


def test_verify_catches_a_changed_or_missing_feature_file(with_features, tmp_path, capsys):
    assert cli.main(["verify", str(with_features)]) == cli.EXIT_OK
    copy = tmp_path / "copy"
    shutil.copytree(with_features, copy)
    shards = _manifest(copy)["shards"]
    changed, gone = copy / shards[0]["features"]["name"], copy / shards[1]["features"]["name"]
    blob = bytearray(changed.read_bytes())
    blob[-20] ^= 0xFF
    changed.write_bytes(bytes(blob))
    gone.unlink()
    (copy / "stray.features.npz").write_bytes(b"x")
    capsys.readouterr()
    assert cli.main(["verify", str(copy)]) == cli.EXIT_FATAL
    out = capsys.readouterr().out
    assert f"{changed.name}: sha256 differs" in out
    assert f"{gone.name}: local-feature file listed in the manifest but missing" in out
    assert "stray.features.npz: local-feature file not listed" in out


def test_a_build_without_features_lists_none_and_refuses_to_resume_with_them(without, kaggle, caplog):
    data = _manifest(without)
    assert "local_features" not in data and not any("features" in s for s in data["shards"])
    assert not list(without.glob("*.features.npz"))
    assert records.load_manifest(str(without)).local_features is None
    with caplog.at_level(logging.ERROR):
        assert build(kaggle, without, "--local-features") == cli.EXIT_FATAL
    assert f"build-tfrecords add-local-features --out {without}" in caplog.text


def test_add_local_features_resumes_after_an_interruption(
    without, with_features, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "records"
    shutil.copytree(without, out)
    written = []
    real = local_features.write_features

    def interrupted(*args, **kwargs):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(local_features, "write_features", interrupted)
    assert cli.main(["add-local-features", "--out", str(out), "--workers", "1", "-q"]) == 130
    assert "local_features" not in _manifest(out)  # the manifest lists nothing until every file is whole
    assert len(list(out.glob("*.features.npz"))) == 3
    monkeypatch.setattr(local_features, "write_features", real)
    capsys.readouterr()
    assert cli.main(["add-local-features", "--out", str(out), "--workers", "1", "-q"]) == cli.EXIT_OK
    n_shards = len(_manifest(out)["shards"])
    assert f"({n_shards - 3} written now, 3 kept)" in capsys.readouterr().out
    # the same files, byte for byte, as a build that took them from the start
    assert [s["features"] for s in _manifest(out)["shards"]] == [
        s["features"] for s in _manifest(with_features)["shards"]
    ]
    assert cli.main(["verify", str(out)]) == cli.EXIT_OK
    assert cli.main(["add-local-features", "--out", str(out), "-q"]) == cli.EXIT_OK  # nothing left to do
    assert "already has its local features" in capsys.readouterr().out


def _empty_rows(out: Path, entry: dict) -> list[str]:
    features = load_feature_set(str(out / entry["name"]))
    return [name for i, name in enumerate(features.names) if len(features[i]) == 0]


def test_photos_without_keypoints_are_counted_per_shard_and_reported(with_features, tmp_path, capsys):
    data = _manifest(with_features)
    empty = {shard["name"]: _empty_rows(with_features, shard["features"]) for shard in data["shards"]}
    assert any(BLANK in names for names in empty.values())
    for shard in data["shards"]:
        assert shard["features"]["no_keypoints"] == len(empty[shard["name"]])
    total = sum(len(names) for names in empty.values())
    assert data["local_features"]["no_keypoints"] == total >= 1
    assert records.load_manifest(str(with_features)).local_features.no_keypoints == total
    note = (f"{total} photos gave no keypoints: they are matched by the embedding alone" if total > 1
            else "1 photo gave no keypoints: it is matched by the embedding alone")  # fmt: skip
    assert note in manifest.summary(data, 0, str(with_features / records.MANIFEST_NAME))
    capsys.readouterr()
    assert cli.main(["verify", str(with_features)]) == cli.EXIT_OK
    assert note in capsys.readouterr().out
    # A manifest from before the count reads as "unknown"; verify counts from the files all the same.
    old = tmp_path / "old"
    shutil.copytree(with_features, old)
    for shard in data["shards"]:
        del shard["features"]["no_keypoints"]
    del data["local_features"]["no_keypoints"]
    (old / records.MANIFEST_NAME).write_text(json.dumps(data))
    assert records.load_manifest(str(old)).local_features.no_keypoints is None
    assert "not counted" in manifest.summary(data, 0, str(old / records.MANIFEST_NAME))
    assert cli.main(["verify", str(old)]) == cli.EXIT_OK
    assert note in capsys.readouterr().out
    # A count that is not the file's is a problem verify names.
    data["shards"][0]["features"]["no_keypoints"] = len(empty[data["shards"][0]["name"]]) + 1
    (old / records.MANIFEST_NAME).write_text(json.dumps(data))
    assert cli.main(["verify", str(old)]) == cli.EXIT_FATAL
    assert "photos without keypoints, manifest says" in capsys.readouterr().out
