"""Training learns identities: synthetic photos -> build-tfrecords -> tiny_cpu on one fold."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from tfrecords_builder import cli as build_cli
from tfwhale import predict, train
from tfwhale.contracts import records
from tfwhale.feed.data import embed
from tfwhale.nets.model import load_saved_model
from tfwhale.synthetic import dataset as synthetic


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("learn")
    data, rec, run = (str(root / name) for name in ("data", "records", "run"))
    synthetic.generate(data, individuals=100, min_photos=8, image_size=192, seed=3, progress=False)
    build = ["--data", data, "--out", rec, "--size", "64", "--boxes", os.path.join(data, "boxes.csv"), "-q"]
    assert build_cli.main(build) == 0
    args = ["--config", "tiny_cpu", "--records", rec, "--out", run, "--fold", "0", "--set",
            "data.image_size=64", "--set", "train.epochs=30", "--set", "train.val_every=30"]  # fmt: skip
    assert train.main(args) == 0
    with open(os.path.join(run, "fold0", "run.json")) as f:
        info = json.load(f)
    with open(os.path.join(run, "fold0", "ckpt", "state.json")) as f:
        history = json.load(f)["history"]
    return {"rec": rec, "run": run, "data": data, "fold": os.path.join(run, "fold0"), "info": info,
            "history": history}  # fmt: skip


def test_loss_falls(trained):
    losses = [row["loss"] for row in trained["history"]]
    assert losses[-1] < 0.5 * losses[0], losses


def test_val_map5_far_above_chance(trained):
    best = trained["info"]["best"]
    manifest = records.load_manifest(trained["rec"])
    # Ranking 5 of ~90 known individuals at random scores about sum(1/r)/90 = 0.025.
    chance = sum(1 / r for r in range(1, 6)) / len(manifest.individuals)
    assert best["val_map5_without_new"] > 6 * chance, best
    # With new_individual inserted, the tuned score must beat always answering it first.
    assert best["val_map5"] > best["val_new_share"] + 0.05, best


def test_same_individual_embeddings_are_closer(trained):
    manifest = records.load_manifest(trained["rec"])
    model = load_saved_model(os.path.join(trained["fold"], "embedding.keras"))
    emb = embed(model, manifest, "train", [0], batch=32)
    ids = np.asarray(emb.ids)
    sims = emb.embeddings @ emb.embeddings.T
    same = ids[:, None] == ids[None, :]
    off_diagonal = ~np.eye(len(ids), dtype=bool)
    same_mean = sims[same & off_diagonal].mean()
    other_mean = sims[~same].mean()
    # Untrained, both means sit near the same value; trained, photos of one animal pull together.
    assert same_mean > other_mean + 0.1, (same_mean, other_mean)


def test_threshold_tuned_with_simulated_new_individuals_answers_new_animals(trained, tmp_path):
    """The test set holds animals never seen; the threshold, tuned out of fold with simulated new
    individuals, must put new_individual first for a good share of them while still ranking known ones.
    (Beating the new_individual-first floor takes a model that separates known from new: the tiny one
    here barely does, ROC AUC ~0.5-0.6; test_new_individual.py asserts it with lite0_224.)"""
    solution = os.path.join(trained["data"], "test_solution.csv")
    out = str(tmp_path / "predict")
    argv = ["--runs", trained["run"], "--records", trained["rec"], "--solution", solution, "--examples", "0"]
    assert predict.main([*argv, "--out", out]) == 0
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    test, threshold = report["test"], report["threshold"]
    assert threshold["oof_new_simulated"] > 0 and threshold["oof_new"] >= threshold["oof_new_simulated"]
    assert (pd.read_csv(solution)["individual_id"] == records.NEW_INDIVIDUAL).mean() > 0.2
    assert test["new_individual_rate"] > 0.1 and test["map5_new"] > 0.1, test
    # Runs differ (the tiny model's known/new ROC AUC came out 0.48-0.6): when it barely separates,
    # the report must say so rather than present the threshold as reliable.
    if threshold["separation_auc"] < 0.65:
        assert any("barely separate" in warning for warning in threshold["warnings"]), threshold
