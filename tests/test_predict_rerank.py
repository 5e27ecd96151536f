"""predict --rerank local end to end: records with local features -> fused OOF calibration and threshold ->
gallery.json that makes identify answer fused, as predict answered the test photos; and the clear stop
on records built without features."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from tests.records_fixture import make_records
from tests.run_fixture import build_synthetic_records, csv_rows, make_run
from tfwhale import identify, predict
from tfwhale.contracts.gallery_manifest import load_gallery_manifest
from tfwhale.contracts.local_features import load_feature_set
from tfwhale.contracts.records import load_manifest
from tfwhale.core.config import ConfigError, load_config
from tfwhale.inference.local_oof import OOFEvidence, calibrate_and_tune, cross_fitted, sample_rows
from tfwhale.inference.submission import PredictError
from tfwhale.matching.rerank import LeaveOneOut
from tfwhale.query.path import QueryPath


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """(data folder, records, run folder, predict output) of an untrained two-fold run, --rerank local."""
    root = tmp_path_factory.mktemp("rerank")
    data, records = build_synthetic_records(root, local_features=True)
    run_dir = make_run(str(root / "run"), load_manifest(records), dim=16)
    out = str(root / "predict")
    argv = ["--runs", run_dir, "--records", records, "--out", out, "--examples", "2", "--rerank", "local"]
    assert predict.main([*argv, "--solution", f"{data}/test_solution.csv"]) == 0
    return data, records, run_dir, out


def test_gallery_json_says_local_with_the_records_features_in_gallery_order(fused):
    _, records, _, out = fused
    manifest = load_gallery_manifest(out)
    assert manifest.rerank == "local" and manifest.local is not None
    assert manifest.threshold.source.endswith("on the fused P(same individual)")
    assert manifest.embedding_threshold is not None  # the catalogue app's grown gallery answers by it
    saved = np.load(f"{out}/embeddings.npz")
    features = load_feature_set(f"{out}/{manifest.local.features_file}", manifest.local.features_sha256)
    assert list(features.names) == saved["train_names"].tolist()
    built = load_manifest(records)
    assert manifest.local.sift == built.data["local_features"]["sift"]  # identify takes them the same way
    for kind in ("cosine", "inliers", "votes"):  # isotonic: probabilities that never decrease
        knots = manifest.local.calibrations[kind]
        assert np.all(np.diff(knots["y"]) >= 0) and 0 <= min(knots["y"]) <= max(knots["y"]) <= 1


def test_report_gives_global_local_and_fused_oof_scores(fused):
    _, _, _, out = fused
    with open(f"{out}/report.json") as f:
        report = json.load(f)
    section = report["rerank"]
    assert section["mode"] == "local"
    # examples.png draws the verified matches of its queries' answers (tests/test_examples_png.py: how)
    assert report["examples"]["verified_answers"] >= 1
    assert set(section["oof"]) == {"global", "local", "fused"}
    for scores in section["oof"].values():
        assert 0 <= scores["map5"] <= 1 and 0 <= scores["known_top1"] <= 1
        assert scores["known_new_auc"] is None or 0 <= scores["known_new_auc"] <= 1
        assert scores["queries"] == report["oof"]["queries"]
    # the OOF answers predict reports are the fused ones, at the fused threshold
    assert report["oof"]["map5"] == pytest.approx(section["oof"]["fused"]["map5"], abs=1e-6)
    assert report["threshold"]["value"] == pytest.approx(section["oof"]["fused"]["threshold"], abs=1e-6)


def test_identify_answers_a_test_photo_fused_as_predict_did(fused):
    """identify takes the photo's features from the photo file (matching.photo), predict took them from
    the builder's feature file: the same function, so the same fused answer."""
    data, _, run_dir, out = fused
    boxes = {row["image"]: row["box"] for row in csv_rows(f"{data}/boxes.csv")}
    submission = {row["image"]: row["predictions"].split(" ") for row in csv_rows(f"{out}/submission.csv")}
    images = [row["image"] for row in csv_rows(f"{data}/test_solution.csv") if boxes.get(row["image"])]
    argv = [f"{data}/test_images/{image}" for image in images] + ["--runs", run_dir, "--gallery", out]
    for image in images:
        argv += ["--box", boxes[image]]
    args = identify.parse_args(argv)
    answers = identify.identify(args)
    assert [a.labels for a in answers] == [submission[image] for image in images]
    path = QueryPath.load(out, batch=4)
    assert path.local is not None  # the fused path, not the embedding alone
    prepared = identify.prepare_each(args.photos, identify.parse_boxes(args.box, len(images)), path)
    assert all(f is not None and len(f) > 0 for f in prepared.features)


def test_records_without_features_stop_with_the_command_to_run(tmp_path, caplog):
    plain = make_records(tmp_path)  # a finished build made without local features
    run = make_run(str(tmp_path / "run"), load_manifest(plain), dim=16)
    out = str(tmp_path / "out")
    with caplog.at_level(logging.ERROR):
        assert predict.main(["--runs", run, "--records", plain, "--out", out, "--rerank", "local"]) == 1
    message = caplog.text
    assert "without local features" in message
    assert f"build-tfrecords add-local-features --out {plain}" in message
    # the default (the run config's predict.rerank) ranks by the embedding alone there, with a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert predict.main(["--runs", run, "--records", plain, "--out", out, "--examples", "0"]) == 0
    assert "add-local-features" in caplog.text
    assert load_gallery_manifest(out).rerank == "none"


def test_oof_rows_are_scored_by_calibrations_fitted_on_the_other_folds():
    """Fold 1 pairs say "high cosine = same individual", fold 0's say the opposite: fold 0's rows get fold
    1's fit (0 and 1), fold 1's rows get fold 0's (a flat 0.5, isotonic on reversed data); a fit on all
    rows would have scored both alike."""
    cosine = np.array([[0.2, 0.8], [0.8, 0.2], [0.8, 0.2], [0.2, 0.8]])  # rows: fold 0, 0, 1, 1
    own = np.array([0, 1, 0, 1])
    loo = LeaveOneOut(cosine, cosine.copy(), cosine.copy(), own, np.ones_like(cosine, bool))
    evidence = OOFEvidence(
        loo, np.array(["a", "b"]), ["p0", "p1", "p2", "p3"], ["s"] * 4, np.array([0, 0, 1, 1])
    )
    for probability in cross_fitted(evidence):
        np.testing.assert_allclose(probability[:2], [[0.0, 1.0], [1.0, 0.0]])
        np.testing.assert_allclose(probability[2:], 0.5)


def test_the_oof_sample_is_capped_seeded_and_gives_each_fold_its_share():
    folds = np.array([-1] * 5 + [0] * 10 + [1] * 30)  # -1: no OOF query (e.g. a fold without a gallery)
    keep = sample_rows(folds, 8, seed=3)
    assert keep.sum() == 8 and not keep[:5].any()
    assert keep[5:15].sum() == 2 and keep[15:].sum() == 6  # 8 x 10/40 and 8 x 30/40
    np.testing.assert_array_equal(sample_rows(folds, 8, seed=3), keep)  # same seed, same sample
    assert not np.array_equal(sample_rows(folds, 8, seed=4), keep)
    np.testing.assert_array_equal(sample_rows(folds, 7, seed=3).sum(), 7)  # 1.75 + 5.25: remainders
    for cap in (None, 40, 1000):  # no cap, or one that covers them: every query
        np.testing.assert_array_equal(sample_rows(folds, cap, seed=3), folds >= 0)


def test_a_sample_of_only_new_individuals_photos_stops_with_a_message_not_a_traceback():
    """--rerank-oof-queries 1 may draw a photo whose individual has no photo in its fold's gallery: no
    same-individual pair to calibrate on (the old code raised sklearn's bare ValueError)."""
    cosine = np.array([[0.9, 0.2, 0.1]])
    scored = np.array([[False, True, True]])  # its own individual (0) is not in the gallery
    loo = LeaveOneOut(cosine, cosine * 10, cosine * 3, np.array([0]), scored)
    evidence = OOFEvidence(loo, np.array(["a", "b", "c"]), ["q.jpg"], ["lion"], np.array([0]))
    message = r"the 1 OOF queries re-ranked give no same-individual pair.*--rerank-oof-queries"
    with pytest.raises(PredictError, match=message):
        calibrate_and_tune(evidence, 0.2, 0, False)
    known = LeaveOneOut(cosine, cosine * 10, cosine * 3, np.array([1]), scored)  # its own (1) is: fits
    fits = OOFEvidence(known, evidence.individuals, evidence.names, evidence.species, evidence.val_folds)
    summaries, _, _ = calibrate_and_tune(fits, 0.2, 0, False)
    assert summaries["fused"]["queries"] == 1


def test_the_oof_cap_is_a_count_or_null():
    assert load_config().predict.rerank_oof_queries == 2000
    assert load_config(overrides=["predict.rerank_oof_queries=null"]).predict.rerank_oof_queries is None
    with pytest.raises(ConfigError, match=r"predict\.rerank_oof_queries=0 must be at least 1"):
        load_config(overrides=["predict.rerank_oof_queries=0"])


def _json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def test_a_cap_below_the_oof_queries_still_writes_a_whole_submission_and_report(fused, tmp_path):
    _, records, run_dir, full = fused
    out = str(tmp_path / "capped")
    argv = ["--runs", run_dir, "--records", records, "--out", out, "--examples", "0", "--rerank", "local"]
    assert predict.main([*argv, "--rerank-oof-queries", "3"]) == 0
    with open(f"{out}/report.json") as f:
        report = json.load(f)
    with open(f"{full}/report.json") as f:
        every = json.load(f)["rerank"]["oof_queries"]
    assert every["reranked"] == every["of"] > 3  # the default cap (2000) covers the fixture's queries
    assert report["rerank"]["oof_queries"] == {"reranked": 3, "of": every["of"], "cap": 3, "seed": 0}
    assert every["cap"] == 2000
    assert report["oof"]["queries"] == 3
    assert all(row["queries"] == 3 for row in report["rerank"]["oof"].values())
    (chosen,) = [row["name"] for row in report["oof_variants"] if row.get("chosen")]
    assert chosen.endswith(f"local re-rank (fused P), on 3 of {every['of']} OOF queries"), chosen
    (whole,) = [row["name"] for row in _json(f"{full}/report.json")["oof_variants"] if row.get("chosen")]
    assert whole.endswith("local re-rank (fused P)"), whole  # every query: the same set as the rows above
    submission = csv_rows(f"{out}/submission.csv")  # the test queries are all re-ranked and answered
    assert sorted(r["image"] for r in submission) == sorted(
        r["image"] for r in csv_rows(f"{full}/submission.csv")
    )
    assert all(len(r["predictions"].split(" ")) == 5 for r in submission)
    manifest = load_gallery_manifest(out)
    assert manifest.rerank == "local" and manifest.threshold.source.endswith("fused P(same individual)")
    assert predict.main([*argv, "--rerank-oof-queries", "0"]) == 1  # a count >= 1, or all
