"""The hand-off contracts: gallery.json round-trips and is refused when stale; run-folder names and checks."""

from __future__ import annotations

import re

import pytest

from tfwhale.contracts import run_folder
from tfwhale.contracts.gallery_manifest import (
    GALLERY_NAME,
    GalleryError,
    GalleryManifest,
    GalleryRun,
    load_gallery_manifest,
    remove_gallery_manifest,
    write_gallery_manifest,
)
from tfwhale.core import files


def _manifest(out: str) -> GalleryManifest:
    files.write_bytes(files.join(out, "embeddings.npz"), b"arrays")
    return GalleryManifest(
        runs=(GalleryRun("runs/a", 1.0, 8, {"fold0": "ab" * 32, "full": "cd" * 32}),),
        flip_tta=True,
        options={"k": 50, "backend": "exact", "dba": 0, "qe": 0, "whiten": False, "blend": 0.0},
        threshold=0.42,
        per_species_thresholds={"beluga": 0.5},
        image_size=96,
        crop={"enlarge": 1.2, "resize_mode": "stretch", "jpeg_quality": 95},
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
    assert loaded.threshold_for("beluga") == 0.5 and loaded.threshold_for("orca") == 0.42
    assert loaded.threshold_for(None) == 0.42


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
    assert run_folder.recorded_fold(str(tmp_path), "fold0", sha, 8).val_fold == 0
    with pytest.raises(run_folder.RunError, match="not the fold the gallery was made with"):
        run_folder.recorded_fold(str(tmp_path), "fold0", "0" * 64, 8)
