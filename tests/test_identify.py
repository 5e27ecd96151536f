"""identify: photos cropped as the builder did, embedded as predict did, answered from the cached gallery."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.run_fixture import build_synthetic_records, csv_rows, make_run
from tfwhale import identify, predict
from tfwhale.contracts.records import load_manifest
from tfwhale.core import files
from tfwhale.core.labels import NEW_INDIVIDUAL as NEW
from tfwhale.query.path import QueryPath


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """(data folder, run folder, predict output): an untrained two-fold run is enough to compare paths."""
    root = tmp_path_factory.mktemp("identify")
    data, records = build_synthetic_records(root)
    run_dir = make_run(str(root / "run"), load_manifest(records), dim=16)
    out = str(root / "predict")
    assert (
        predict.main(
            ["--runs", run_dir, "--records", records, "--out", out, "--tta", "flip", "--examples", "0"]
        )
        == 0
    )
    return data, run_dir, out


def _box(data: str, image: str) -> str:
    return next(row["box"] for row in csv_rows(f"{data}/boxes.csv") if row["image"] == image)


def _args(photos, run_dir, out, boxes=None, extra=()):
    argv = [*photos, "--runs", run_dir, "--gallery", out, *extra]
    for box in boxes or []:
        argv += ["--box", box]
    return identify.parse_args(argv)


def test_a_test_photo_gets_the_submission_answer_and_the_records_embedding(gallery):
    data, run_dir, out = gallery
    image = next(row["image"] for row in csv_rows(f"{data}/test_solution.csv") if _box(data, row["image"]))
    args = _args([f"{data}/test_images/{image}"], run_dir, out, boxes=[_box(data, image)])
    (answer,) = identify.identify(args)
    submission = {row["image"]: row["predictions"].split(" ") for row in csv_rows(f"{out}/submission.csv")}
    assert answer.labels == submission[image]
    assert len(answer.labels) == 5 and len(set(answer.labels)) == 5
    assert [s is None for s in answer.similarities] == [label == NEW for label in answer.labels]
    # the photo's embedding through identify is the records pass's embedding of the same photo
    path = QueryPath.load(out, batch=4)
    prepared = identify.prepare_each(args.photos, identify.parse_boxes(args.box, 1), path)
    assert prepared.errors == [None] and prepared.features == [None]  # no local features in this gallery
    embedding = path.embed(np.stack(prepared.images), args.photos).combined
    saved = np.load(f"{out}/embeddings.npz")
    row = saved["test_names"].tolist().index(image)
    np.testing.assert_allclose(embedding[0], saved["test"][row], atol=1e-4)


def test_a_gallery_photo_finds_itself_first(gallery):
    data, run_dir, out = gallery
    row = csv_rows(f"{data}/train.csv")[0]
    args = _args([f"{data}/train_images/{row['image']}"], run_dir, out, boxes=[_box(data, row["image"])])
    (answer,) = identify.identify(args)
    real = [(label, s) for label, s in zip(answer.labels, answer.similarities, strict=True) if label != NEW]
    assert real[0][0] == row["individual_id"] and real[0][1] == pytest.approx(1.0, abs=1e-4)
    assert answer.species[answer.labels.index(row["individual_id"])] == row["species"]


def test_blend_and_post_processing_carry_over_from_predict(gallery, tmp_path):
    """A predict with every option, then identify through a moved copy of the run folder."""
    data, run_dir, out = gallery
    blended = str(tmp_path / "blended")
    shutil.copytree(f"{out}/cache", f"{blended}/cache")
    records = files.read_json(f"{out}/report.json")["records"]["root"]
    argv = ["--runs", run_dir, "--records", records, "--out", blended, "--tta", "flip", "--examples", "0"]
    assert predict.main([*argv, "--blend", "0.5", "--whiten", "--dba", "2", "--qe", "2"]) == 0
    moved = str(tmp_path / "moved")
    shutil.copytree(run_dir, moved)
    images = [row["image"] for row in csv_rows(f"{data}/test_solution.csv")[:3]]
    photos = [f"{data}/test_images/{image}" for image in images]
    answers = identify.identify(_args(photos, moved, blended, boxes=[_box(data, i) for i in images]))
    rows = csv_rows(f"{blended}/submission.csv")
    submission = {row["image"]: row["predictions"].split(" ") for row in rows}
    assert [a.labels for a in answers] == [submission[image] for image in images]


def test_whole_photos_without_box_and_json_output(gallery, capsys):
    data, run_dir, out = gallery
    photos = [f"{data}/test_images/{row['image']}" for row in csv_rows(f"{data}/test_solution.csv")[:2]]
    assert identify.main([*photos, "--runs", run_dir, "--gallery", out, "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["photo"] for a in answers] == photos and all(a["box"] is None for a in answers)
    for answer in answers:
        labels = [p["label"] for p in answer["predictions"]]
        assert len(set(labels)) == 5 and [p["rank"] for p in answer["predictions"]] == [1, 2, 3, 4, 5]
        for p in answer["predictions"]:
            assert (p["similarity"] is None) == (p["label"] == NEW)
    threshold = files.read_json(f"{out}/report.json")["threshold"]["value"]
    assert answers[0]["threshold"] == threshold
    assert identify.main([photos[0], "--gallery", out]) == 0  # runs default to the recorded ones
    table = capsys.readouterr().out
    assert photos[0] in table and "whole photo" in table and table.count("\n  ") == 5


def test_a_box_count_that_does_not_match_the_photos_is_refused(gallery, caplog):
    data, _, out = gallery
    photo = next(iter(files.glob(f"{data}/test_images/*.jpg")))
    assert identify.main([photo, photo, "--gallery", out, "--box", "1 2 30 40"]) == 1
    assert "--box given 1 times for 2 photos" in caplog.text


def test_a_folder_without_a_gallery_is_refused(gallery, tmp_path, caplog):
    data, _, _ = gallery
    photo = next(iter(files.glob(f"{data}/test_images/*.jpg")))
    assert identify.main([photo, "--gallery", str(tmp_path)]) == 1
    assert "no finished predict output here" in caplog.text


def test_runs_other_than_the_gallerys_are_refused(gallery, tmp_path, caplog):
    data, _, out = gallery
    photo = next(iter(files.glob(f"{data}/test_images/*.jpg")))
    records = load_manifest(files.read_json(f"{out}/report.json")["records"]["root"])
    other = make_run(str(tmp_path / "other"), records, dim=16, seed=5)
    assert identify.main([photo, "--gallery", out, "--runs", other]) == 1
    assert "not the fold the gallery was made with" in caplog.text
    assert identify.main([photo, "--gallery", out, "--runs", str(tmp_path / "gone")]) == 1
    assert "gone: run folder not found" in caplog.text


def test_a_missing_fold_model_is_named(gallery, tmp_path, caplog):
    data, run_dir, out = gallery
    photo = next(iter(files.glob(f"{data}/test_images/*.jpg")))
    moved = str(tmp_path / "moved")
    shutil.copytree(run_dir, moved)
    files.remove(f"{moved}/fold1/embedding.keras")
    assert identify.main([photo, "--gallery", out, "--runs", moved]) == 1
    assert "fold1/embedding.keras: missing" in caplog.text


def test_a_missing_photo_is_named(gallery, tmp_path, caplog):
    _, _, out = gallery
    assert identify.main([str(tmp_path / "absent.jpg"), "--gallery", out]) == 1
    assert "absent.jpg: file not found" in caplog.text


def test_an_unreadable_photo_is_named_and_the_others_answered(gallery, tmp_path, caplog):
    data, _, out = gallery
    photo = next(iter(files.glob(f"{data}/test_images/*.jpg")))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    assert identify.main([str(broken), "--gallery", out]) == 1
    assert "broken.jpg: cannot decode image" in caplog.text
    assert identify.main([str(broken), photo, "--gallery", out]) == 3  # some answered, some failed
