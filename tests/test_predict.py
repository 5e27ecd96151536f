"""Predict stage end to end: synthetic photos -> build-tfrecords -> tiny trained run -> submission, report."""

from __future__ import annotations

import csv
import os
import shutil

import keras
import numpy as np
import pytest

from tests.records_fixture import make_records
from tests.run_fixture import build_synthetic_records, make_run
from tfwhale import predict, train
from tfwhale.contracts.records import load_manifest
from tfwhale.core import files
from tfwhale.core.metrics import map_at_k
from tfwhale.retrieval.threshold import NEW


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data folder, records folder, run folder): 16 individuals, 32 px, 2 folds, 2 epochs of TinyConvNet
    with 32-dim embeddings (every setting that matters pinned here, whatever tiny_cpu.yaml says)."""
    root = tmp_path_factory.mktemp("predict")
    data, records = build_synthetic_records(root)
    run_dir = str(root / "run")
    overrides = [
        "data.image_size=32", "model.backbone=TinyConvNet", "train.epochs=2", "data.batch_size=4",
        "data.shuffle_buffer=16", "train.verbose=0", "model.embedding_dim=32",
        "train.val_every=1",
    ]  # fmt: skip
    argv = ["--config", "tiny_cpu", "--records", records, "--out", run_dir, "--folds", "all"]
    assert train.main(argv + [x for o in overrides for x in ("--set", o)]) == 0
    return data, records, run_dir


@pytest.fixture(scope="module")
def first_predict(trained, tmp_path_factory):
    data, records, run_dir = trained
    out = str(tmp_path_factory.mktemp("out") / "predict")
    argv = ["--runs", run_dir, "--records", records, "--out", out, "--examples", "3"]
    argv += [
        "--solution",
        f"{data}/test_solution.csv",
        "--sample-submission",
        f"{data}/sample_submission.csv",
    ]
    assert predict.main(argv) == 0
    return out


def read_submission(path: str) -> dict[str, list[str]]:
    with open(path) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "predictions"]
    return {image: labels.split(" ") for image, labels in rows[1:]}


def reuse_cache(first_predict: str, tmp_path) -> str:
    """A fresh output folder holding the first predict's embedding cache."""
    out = str(tmp_path / "again")
    shutil.copytree(f"{first_predict}/cache", f"{out}/cache")
    return out


def read_csv_column(path: str, column: str) -> list[str]:
    with open(path) as f:
        return [row[column] for row in csv.DictReader(f)]


def test_submission_answers_every_test_image_once_with_five_distinct_labels(trained, first_predict):
    data, records, _ = trained
    submission = read_submission(f"{first_predict}/submission.csv")
    sample = read_csv_column(f"{data}/sample_submission.csv", "image")
    assert list(submission) == sample  # the sample's order, every image once
    assert len(submission) == load_manifest(records).count("test")
    known = set(read_csv_column(f"{data}/train.csv", "individual_id")) | {NEW}
    for labels in submission.values():
        assert len(labels) == 5 and len(set(labels)) == 5 and set(labels) <= known


def test_report_scores_the_solution_and_tunes_the_threshold(trained, first_predict):
    data, _, run_dir = trained
    report = files.read_json(f"{first_predict}/report.json")
    assert report["status"] == "finished"
    submission = read_submission(f"{first_predict}/submission.csv")
    solution = dict(
        zip(
            *(read_csv_column(f"{data}/test_solution.csv", c) for c in ("image", "individual_id")),
            strict=True,
        )
    )
    expected = map_at_k([solution[n] for n in submission], [submission[n] for n in submission])
    assert report["test"]["map5"] == pytest.approx(expected, abs=1e-6)
    assert report["test"]["scored_queries"] == len(solution)
    threshold = report["threshold"]
    assert threshold["source"].startswith("auto") and 0.0 <= threshold["value"] <= 1.0
    oof = report["oof"]
    assert oof["queries"] == report["records"]["train"]  # every train image is an OOF query once
    assert set(oof["per_species"]) == set(read_csv_column(f"{data}/train.csv", "species"))
    assert sum(row["queries"] for row in oof["per_species"].values()) == oof["queries"]
    assert 0.0 <= oof["map5"] <= 1.0 and set(oof["per_fold"]) == {"fold0", "fold1"}
    assert [v["name"] for v in report["oof_variants"]] == ["knn"]
    assert report["cache"]["computed"] == [f"{run_dir}/fold0", f"{run_dir}/fold1"]
    assert report["embedding_dim"] == 32 and report["records"]["crop"]["resize_mode"] == "square"
    for name in ("threshold_curve.png", "examples.png"):
        assert files.read_bytes(f"{first_predict}/{name}")[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_with_fixed_threshold_uses_the_cache_and_the_threshold(
    trained, first_predict, tmp_path, monkeypatch
):
    _, records, run_dir = trained
    out = reuse_cache(first_predict, tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the cache holds every embedding")

    monkeypatch.setattr(keras.models, "load_model", refuse)
    argv = ["--runs", run_dir, "--records", records, "--out", out, "--threshold", "0.5", "--examples", "0"]
    assert predict.main(argv) == 0
    report = files.read_json(f"{out}/report.json")
    assert report["cache"] == {"reused": [f"{run_dir}/fold0", f"{run_dir}/fold1"], "computed": []}
    assert report["threshold"]["value"] == 0.5 and report["threshold"]["source"] == "fixed"
    # new_individual comes first exactly where even the best gallery similarity is <= 0.5
    saved = np.load(f"{out}/embeddings.npz")
    assert "gallery" not in saved.files  # no post-processing: the gallery is the train embeddings
    best = (saved["test"] @ saved["train"].T).max(axis=1)
    submission = read_submission(f"{out}/submission.csv")
    firsts = [submission[name][0] == NEW for name in saved["test_names"]]
    assert firsts == [bool(b <= 0.5) for b in best]


def test_calibration_is_opt_in_and_moves_the_threshold_by_quantiles(trained, first_predict, tmp_path):
    data, records, run_dir = trained
    default = files.read_json(f"{first_predict}/report.json")["threshold"]
    assert default["calibration"] is None and default["value"] == default["tuned_on_oof"]
    out = reuse_cache(first_predict, tmp_path)
    argv = ["--runs", run_dir, "--records", records, "--out", out, "--examples", "0", "--calibrate",
            "--solution", f"{data}/test_solution.csv"]  # fmt: skip
    assert predict.main(argv) == 0
    report = files.read_json(f"{out}/report.json")
    calibration = report["threshold"]["calibration"]
    assert calibration["tuned_threshold"] == default["tuned_on_oof"]
    assert report["threshold"]["value"] == pytest.approx(calibration["test_threshold"])
    assert "map5_uncalibrated" in report["test"]  # the uncalibrated score, for comparison
    with pytest.raises(SystemExit):
        predict.main([*argv, "--no-calibrate"])  # one or the other


def test_two_runs_are_concatenated(trained, tmp_path):
    _, records, run_dir = trained
    other = make_run(str(tmp_path / "other"), load_manifest(records), dim=8)
    out = str(tmp_path / "out")
    argv = [
        "--runs",
        run_dir,
        other,
        "--weights",
        "1",
        "0.5",
        "--records",
        records,
        "--out",
        out,
        "--examples",
        "0",
    ]
    assert predict.main(argv) == 0
    report = files.read_json(f"{out}/report.json")
    assert [r["embedding_dim"] for r in report["runs"]] == [32, 8] and report["embedding_dim"] == 40
    assert [r["weight"] for r in report["runs"]] == [1.0, 0.5]
    saved = np.load(f"{out}/embeddings.npz")
    assert saved["train"].shape == (report["records"]["train"], 40)
    np.testing.assert_allclose(np.linalg.norm(saved["test"], axis=1), 1.0, atol=1e-5)
    # the first run's block carries weight 1 / 1.5 of the squared norm
    np.testing.assert_allclose(np.linalg.norm(saved["test"][:, :32], axis=1) ** 2, 2 / 3, atol=1e-5)


def test_post_processing_and_blend_are_measured_on_oof(trained, first_predict, tmp_path):
    _, records, run_dir = trained
    out = reuse_cache(first_predict, tmp_path)
    argv = ["--runs", run_dir, "--records", records, "--out", out, "--examples", "0"]
    argv += ["--blend", "0.5", "--dba", "2", "--qe", "2", "--whiten", "--new-share", "0.1"]
    assert predict.main(argv) == 0
    report = files.read_json(f"{out}/report.json")
    names = [v["name"] for v in report["oof_variants"]]
    assert names == [
        "knn",
        "knn+whiten",
        "knn+dba2",
        "knn+qe2",
        "knn+blend0.5",
        "knn+whiten+dba2+qe2+blend0.5",
    ]
    assert [v.get("chosen", False) for v in report["oof_variants"]] == [False] * 5 + [True]
    assert all(0.0 <= v["map5"] <= 1.0 for v in report["oof_variants"])
    assert report["threshold"]["new_share"] == 0.1 and report["options"]["blend"] == 0.5
    assert len(read_submission(f"{out}/submission.csv")) == report["test"]["queries"]


def test_bad_inputs_fail_clearly_and_leave_no_finished_report(trained, tmp_path, caplog):
    _, records, run_dir = trained
    out = str(tmp_path / "out")
    base = ["--runs", run_dir, "--records", records, "--out", out, "--examples", "0"]
    _, other_labels = build_synthetic_records(tmp_path / "other", individuals=12, seed=1)
    assert predict.main(["--runs", run_dir, "--records", other_labels, "--out", out]) == 1
    assert "fold0/run.json: trained on other records" in caplog.text
    bad_sample = tmp_path / "sample.csv"
    bad_sample.write_text("image,predictions\nnot_a_test_image.jpg,new_individual\n")
    assert predict.main([*base, "--sample-submission", str(bad_sample)]) == 1
    assert "1 image(s) not in the test records" in caplog.text
    assert predict.main([*base, "--weights", "1", "2"]) == 1
    assert "--weights has 2 values for 1 runs" in caplog.text
    no_test = make_records(tmp_path / "no_test", with_test=False)
    assert predict.main(["--runs", run_dir, "--records", no_test, "--out", out]) == 1
    assert "no test records (built with --no-test?)" in caplog.text
    assert not files.exists(f"{out}/report.json")


def test_records_with_other_folds_are_refused(trained, tmp_path, caplog):
    """Same photos and labels, folds drawn with another seed: fold k's model trained on some of the
    photos these records call fold k, so their out-of-fold scores would be leaks."""
    from tfrecords_builder.cli import main as build_main

    data, _, run_dir = trained
    other = str(tmp_path / "reseeded")
    argv = ["--data", data, "--boxes", f"{data}/boxes.csv", "--size", "32", "--out", other, "--folds", "2"]
    assert build_main([*argv, "--seed", "7", "--workers", "1", "-q"]) == 0
    assert predict.main(["--runs", run_dir, "--records", other, "--out", str(tmp_path / "out")]) == 1
    assert "fold0/oof.npz: the trainer's fold 0 held" in caplog.text
    assert "the records are from another build" in caplog.text


@pytest.mark.parametrize("backend", ["sklearn", "faiss"])
def test_knn_backends_give_the_same_submission(trained, first_predict, tmp_path, backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    _, records, run_dir = trained
    out = reuse_cache(first_predict, tmp_path)
    threshold = str(files.read_json(f"{first_predict}/report.json")["threshold"]["value"])
    argv = [
        "--runs",
        run_dir,
        "--records",
        records,
        "--out",
        out,
        "--examples",
        "0",
        "--threshold",
        threshold,
    ]
    assert predict.main([*argv, "--knn", backend]) == 0
    assert files.read_json(f"{out}/report.json")["options"]["knn"] == backend
    assert read_submission(f"{out}/submission.csv") == read_submission(f"{first_predict}/submission.csv")


def test_a_run_without_fold_models_needs_a_fixed_threshold(trained, tmp_path, caplog):
    _, records, _ = trained
    full_only = make_run(str(tmp_path / "full_only"), load_manifest(records), folds=("full",))
    argv = ["--runs", full_only, "--records", records, "--out", str(tmp_path / "out"), "--examples", "0"]
    assert predict.main(argv) == 1
    assert "the threshold cannot be tuned; pass --threshold VALUE" in caplog.text
    assert predict.main([*argv, "--threshold", "0.3"]) == 0
    report = files.read_json(f"{tmp_path}/out/report.json")
    assert report["oof"] is None and report["oof_variants"] == [] and report["threshold"]["value"] == 0.3


def _upload(local_dir: str, remote_dir: str) -> None:
    for folder, _, names in os.walk(local_dir):
        if "tensorboard" in folder or "ckpt" in folder:
            continue
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files.write_bytes(f"{remote_dir}/{os.path.relpath(path, local_dir)}", f.read())


@pytest.mark.gcs
def test_predict_and_identify_on_gcs(trained, first_predict, gcs_bucket):
    """Records, run and outputs all on gs:// (local GCS emulator): the same answers as locally."""
    from tfwhale import identify

    data, records, run_dir = trained
    _upload(records, f"{gcs_bucket}/records")
    _upload(run_dir, f"{gcs_bucket}/run")
    out = f"{gcs_bucket}/predict"
    threshold = str(files.read_json(f"{first_predict}/report.json")["threshold"]["value"])
    argv = [
        "--runs",
        f"{gcs_bucket}/run",
        "--records",
        f"{gcs_bucket}/records",
        "--out",
        out,
        "--examples",
        "2",
    ]
    assert predict.main(argv) == 0
    report = files.read_json(f"{out}/report.json")
    assert report["threshold"]["value"] == float(threshold)
    local = read_submission(f"{first_predict}/submission.csv")
    remote = {
        row[0]: row[1].split(" ")
        for row in csv.reader(files.read_text(f"{out}/submission.csv").splitlines()[1:])
    }
    assert remote == local
    image = next(iter(local))
    (answer,) = identify.identify(identify.parse_args([f"{data}/test_images/{image}", "--gallery", out]))
    assert len(answer.labels) == 5
