"""The hand-off contracts: gallery.json and embeddings.npz round-trip and are refused when stale; run.json,
run-folder names and checks; the crop settings saved whole."""

from __future__ import annotations

import re
from dataclasses import asdict

import numpy as np
import pytest

from tfwhale.contracts import run_folder
from tfwhale.contracts.gallery_arrays import (
    FoldCentres,
    GalleryArrays,
    load_gallery_arrays,
    write_gallery_arrays,
)
from tfwhale.contracts.gallery_manifest import (
    GALLERY_NAME,
    GalleryError,
    GalleryManifest,
    GalleryRun,
    ThresholdPolicy,
    load_gallery_manifest,
    remove_gallery_manifest,
    write_gallery_manifest,
)
from tfwhale.core import files
from tfwhale.imaging.photo_crop import ImageSettings


def _manifest(out: str) -> GalleryManifest:
    files.write_bytes(files.join(out, "embeddings.npz"), b"arrays")
    return GalleryManifest(
        runs=(GalleryRun("runs/a", 1.0, 8, {"fold0": "ab" * 32, "full": "cd" * 32}),),
        flip_tta=True,
        options={"k": 50, "backend": "exact", "dba": 0, "qe": 0, "whiten": False, "blend": 0.0},
        threshold=ThresholdPolicy(0.42, {"beluga": 0.5}, "auto", 0.61, ("few new queries",)),
        image=ImageSettings(96, enlarge=1.1, resize_mode="letterbox", quality=95, max_pixels=1000),
        records_root="records",
        records_manifest_sha256="ef" * 32,
        embeddings_file="embeddings.npz",
        embeddings_sha256=files.sha256(files.join(out, "embeddings.npz")),
    )


def test_gallery_manifest_round_trips(tmp_path):
    written = _manifest(str(tmp_path))
    write_gallery_manifest(str(tmp_path), written)
    loaded = load_gallery_manifest(str(tmp_path))
    assert loaded == written
    policy = loaded.threshold
    assert policy.threshold_for("beluga") == 0.5 and policy.threshold_for("orca") == 0.42
    assert policy.threshold_for(None) == 0.42 and loaded.image_size == 96
    assert loaded.threshold.fixed(0.3).threshold_for("beluga") == 0.3


def test_a_format_1_gallery_json_is_read_as_format_2(tmp_path):
    out = str(tmp_path)
    current = _manifest(out)
    body = {**asdict(current), "format_version": 1, "threshold": 0.42, "per_species_thresholds": {"b": 0.5}}
    del body["image"]
    body.update(image_size=96, crop={"enlarge": 1.1, "resize_mode": "letterbox", "jpeg_quality": 95})
    files.write_json(files.join(out, GALLERY_NAME), {"status": "finished", **body})
    loaded = load_gallery_manifest(out)
    assert loaded.threshold == ThresholdPolicy(0.42, {"b": 0.5}, "recorded (format 1)")
    assert loaded.image == ImageSettings(96, 1.1, "letterbox", 95)  # max_pixels: the default


def test_gallery_arrays_round_trip_with_centres_and_whitening(tmp_path):
    rng = np.random.default_rng(0)
    arrays = GalleryArrays(
        train=rng.normal(size=(3, 4)).astype(np.float32),
        train_names=["a.jpg", "b.jpg", "c.jpg"],
        train_ids=["x", "x", "y"],
        train_species=["orca", "orca", "beluga"],
        train_folds=np.array([0, 1, 1]),
        test=rng.normal(size=(2, 4)).astype(np.float32),
        test_names=["t1.jpg", "t2.jpg"],
        class_names=["x", "y"],
        searched=rng.normal(size=(3, 2)).astype(np.float32),
        whitening=(np.zeros(4), np.ones((4, 2)), np.ones(2)),
        centres=(FoldCentres(0, "fold0", np.ones((4, 2)), 1), FoldCentres(1, "fold1", np.ones((4, 6)), 3)),
    )
    loaded = load_gallery_arrays(write_gallery_arrays(str(tmp_path), arrays))
    np.testing.assert_array_equal(loaded.gallery, arrays.searched)
    assert loaded.train_ids == ["x", "x", "y"] and loaded.test_names == ["t1.jpg", "t2.jpg"]
    assert loaded.centres_of(1, "fold1").subcenters == 3 and loaded.centres_of(0, "fold1") is None
    np.testing.assert_array_equal(loaded.whitening[1], np.ones((4, 2)))


def test_run_json_round_trips_and_an_unknown_one_is_refused_by_name(tmp_path):
    refs = run_folder.RecordsRef("rec", "a" * 64, "b" * 64, 5, 96)
    record = run_folder.RunRecord("fold0", 0, [1, 2, 3, 4], 12, refs, best={"epoch": 9, "val_map5": 0.4})
    fold = files.join(str(tmp_path), "fold0")
    files.makedirs(fold)
    files.write_json(files.join(fold, run_folder.RUN_JSON), record.to_json())
    assert run_folder.read_run_record(fold) == record
    files.write_json(files.join(fold, run_folder.RUN_JSON), {**record.to_json(), "colour": "blue"})
    assert run_folder.read_run_record(fold).extra == {"colour": "blue"}  # a newer trainer's field, kept
    body = record.to_json()
    del body["records"]["image_size"]
    files.write_json(files.join(fold, run_folder.RUN_JSON), body)
    with pytest.raises(run_folder.RunError, match=r"fold0/run\.json: not a run\.json"):
        run_folder.read_run_record(fold)


def test_image_settings_are_saved_and_read_whole():
    settings = ImageSettings(128, enlarge=1.5, resize_mode="letterbox", quality=80, max_pixels=12345)
    assert ImageSettings.from_manifest(128, settings.manifest_fields()) == settings


def test_changed_embeddings_or_missing_marker_are_refused(tmp_path):
    out = str(tmp_path)
    write_gallery_manifest(out, _manifest(out))
    files.write_bytes(files.join(out, "embeddings.npz"), b"other arrays")
    with pytest.raises(GalleryError, match=r"embeddings\.npz: missing or changed"):
        load_gallery_manifest(out)
    remove_gallery_manifest(out)
    with pytest.raises(GalleryError, match=re.escape(f"{GALLERY_NAME} missing")):
        load_gallery_manifest(out)


def test_unreadable_gallery_json_names_the_file(tmp_path):
    files.write_json(files.join(str(tmp_path), GALLERY_NAME), {"status": "finished", "runs": "nonsense"})
    with pytest.raises(GalleryError, match="not a gallery manifest"):
        load_gallery_manifest(str(tmp_path))


def test_fold_names_and_the_finished_check(tmp_path):
    assert run_folder.fold_dir_name(3) == "fold3" and run_folder.fold_dir_name(None) == "full"
    assert run_folder.val_fold_of("fold12") == 12 and run_folder.val_fold_of("full") is None
    fold = files.join(str(tmp_path), "fold0")
    files.makedirs(fold)
    assert not run_folder.is_finished(fold)
    files.write_json(files.join(fold, run_folder.RUN_JSON), {"status": "training"})
    assert not run_folder.is_finished(fold)
    files.write_json(files.join(fold, run_folder.RUN_JSON), {"status": "finished"})
    assert run_folder.is_finished(fold)
    sha = files.sha256(files.join(fold, run_folder.RUN_JSON))
    with pytest.raises(run_folder.RunError, match=r"embedding\.keras: missing"):
        run_folder.recorded_fold(str(tmp_path), "fold0", sha, 8)
    files.write_bytes(files.join(fold, run_folder.EMBEDDING_MODEL), b"model")
    assert run_folder.recorded_fold(str(tmp_path), "fold0", sha, 8).val_fold == 0
    with pytest.raises(run_folder.RunError, match="run folder not found"):
        run_folder.recorded_fold(str(tmp_path / "gone"), "fold0", sha, 8)
    with pytest.raises(run_folder.RunError, match="not the fold the gallery was made with"):
        run_folder.recorded_fold(str(tmp_path), "fold0", "0" * 64, 8)
