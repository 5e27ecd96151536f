"""Predict stage: run folders checked, records embedded per fold, folds averaged, runs concatenated."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.records_fixture import make_records
from tests.run_fixture import make_run
from tfwhale.contracts import records as records_contract
from tfwhale.contracts.records import load_manifest
from tfwhale.contracts.run_folder import RunError, load_run
from tfwhale.core import files
from tfwhale.feed.data import embed
from tfwhale.inference.gallery import cache_path, embed_runs
from tfwhale.nets.model import load_saved_model
from tfwhale.query.combine import concat_runs
from tfwhale.query.embedder import TTAModel


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    # individuals 0..5 with 4, 1, 3, 5, 2, 4 photos; even labels in fold 0, odd in fold 1
    return load_manifest(make_records(tmp_path_factory.mktemp("gallery")))


@pytest.fixture(scope="module")
def run_dir(records, tmp_path_factory):
    return make_run(str(tmp_path_factory.mktemp("runs") / "tiny"), records)


def test_embed_runs_averages_folds_and_keeps_the_record_order(records, run_dir, tmp_path):
    run = load_run(run_dir, records)
    emb = embed_runs([run], records, str(tmp_path), batch=4)
    index = emb.index
    assert len(index.train_names) == records.count("train") == 19
    assert sorted(index.test_names) == [f"q{i:03d}.jpg" for i in range(5)]
    # fold by fold: every row's fold is the fold its individual lives in (label % 2)
    labels = [int(i.removeprefix("whale_")) for i in index.train_ids]
    assert list(index.train_folds) == [label % 2 for label in labels]
    assert index.train_species == [("beluga", "orca")[label % 2] for label in labels]
    fold0, fold1 = emb.runs[0].folds
    assert fold0.train.shape == fold1.train.shape == (19, 8) and fold0.test.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(fold0.train, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(fold0.train, fold1.train)  # two different models
    mean = (fold0.train + fold1.train) / 2
    expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(emb.combined("train"), expected, atol=1e-6)
    # the fold pass matches a direct embedding of the same fold's records
    model = load_saved_model(f"{run_dir}/fold0/embedding.keras")
    direct = embed(model, records, "train", [1], batch=4)
    rows = index.train_folds == 1
    np.testing.assert_allclose(fold0.train[rows], direct.embeddings, atol=1e-5)
    assert [n for n, r in zip(index.train_names, rows, strict=True) if r] == direct.names


def test_flip_tta_is_the_mean_of_plain_and_mirrored_passes(records, run_dir, tmp_path):
    run = load_run(run_dir, records)
    ((fold0, _),) = [embed_runs([run], records, str(tmp_path), batch=4, flip=True).runs[0].folds]
    model = load_saved_model(f"{run_dir}/fold0/embedding.keras")
    plain = embed(model, records, "test", None, batch=4)
    mirrored = embed(_Mirrored(model), records, "test", None, batch=4)
    assert not np.allclose(plain.embeddings, mirrored.embeddings, atol=1e-3)  # the flip changes something
    both = plain.embeddings + mirrored.embeddings
    np.testing.assert_allclose(fold0.test, both / np.linalg.norm(both, axis=1, keepdims=True), atol=1e-5)


class _Mirrored:
    """The fold model on mirror images: what flip TTA adds to the plain pass."""

    def __init__(self, model):
        self.model = model

    def predict(self, images, verbose=0):
        return self.model.predict(images.map(tf.image.flip_left_right), verbose=verbose)


def test_the_records_pass_and_the_photo_pass_share_one_tta(records, run_dir):
    """TTAModel.predict (predict's record pass) and TTAModel.embed (identify, serve) give the same vectors."""
    model = load_saved_model(f"{run_dir}/fold0/embedding.keras")
    tta = TTAModel(model, flip=True, batch=4)
    from_records = embed(tta, records, "test", None, batch=4)
    parsed = tf.data.TFRecordDataset(records.shard_paths("test")).map(records_contract.parse_test_example)
    by_name = {
        example["image_name"].numpy().decode(): records_contract.decode_image(example["image"], 32).numpy()
        for example in parsed
    }
    photos = tta.embed(np.stack([by_name[name] for name in from_records.names]))
    norms = np.linalg.norm(from_records.embeddings, axis=1, keepdims=True)
    np.testing.assert_allclose(photos, from_records.embeddings / norms, atol=1e-5)


def test_second_pass_reads_the_cache_and_loads_no_model(records, run_dir, tmp_path, monkeypatch):
    run = load_run(run_dir, records)
    first = embed_runs([run], records, str(tmp_path), batch=4)
    assert len(first.computed) == 2 and not first.reused
    assert files.exists(cache_path(str(tmp_path), run.folds[0], flip=False))

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the cache holds the embeddings")

    monkeypatch.setattr(keras.models, "load_model", refuse)
    second = embed_runs([run], records, str(tmp_path), batch=4)
    assert len(second.reused) == 2 and not second.computed
    np.testing.assert_array_equal(second.combined("train"), first.combined("train"))
    assert second.index.train_names == first.index.train_names
    with pytest.raises(AssertionError, match="a model was loaded"):  # another TTA is another cache entry
        embed_runs([run], records, str(tmp_path), batch=4, flip=True)


def test_retrained_fold_invalidates_its_cache(records, tmp_path):
    run_dir = make_run(str(tmp_path / "run"), records, folds=("fold0",))
    embed_runs([load_run(run_dir, records)], records, str(tmp_path / "out"), batch=4)
    info = files.read_json(f"{run_dir}/fold0/run.json")
    files.write_json(f"{run_dir}/fold0/run.json", {**info, "epochs": 99})
    again = embed_runs([load_run(run_dir, records)], records, str(tmp_path / "out"), batch=4)
    assert again.computed == (f"{run_dir}/fold0",)
    assert len(files.listdir(str(tmp_path / "out" / "cache" / "run"))) == 1  # the stale arrays are gone


def test_concat_runs_gives_the_weighted_mean_of_cosines():
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(4, dim)) for dim in (3, 5))
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    combined = concat_runs([a, b], [1.0, 3.0])
    assert combined.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(combined, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(combined @ combined[0], 0.25 * (a @ a[0]) + 0.75 * (b @ b[0]), atol=1e-6)


def _edit_run_json(path: str, **records_changes) -> None:
    info = files.read_json(path)
    info["records"].update(records_changes)
    files.write_json(path, info)


def test_runs_from_other_records_are_refused(records, tmp_path):
    run_dir = make_run(str(tmp_path / "run"), records, folds=("fold0",))
    _edit_run_json(f"{run_dir}/fold0/run.json", labels_sha256="0" * 64)
    with pytest.raises(RunError, match=r"fold0/run.json: trained on other records .*label maps differ"):
        load_run(run_dir, records)
    _edit_run_json(f"{run_dir}/fold0/run.json", labels_sha256=records.labels_sha256, image_size=64)
    with pytest.raises(RunError, match=r"fold0/run.json: .*image size 64 != 32"):
        load_run(run_dir, records)


def test_unfinished_or_incomplete_runs_are_refused(records, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunError, match="no fold folders"):
        load_run(str(empty), records)
    with pytest.raises(RunError, match="run folder not found"):
        load_run(str(tmp_path / "absent"), records)
    run_dir = make_run(str(tmp_path / "run"), records)
    files.remove(f"{run_dir}/fold1/embedding.keras")
    with pytest.raises(RunError, match=r"fold1: embedding.keras is missing"):
        load_run(run_dir, records)
    files.remove(f"{run_dir}/fold1/run.json")
    with pytest.raises(RunError, match=r"fold1: not finished \(no run.json\)"):
        load_run(run_dir, records)
    info = files.read_json(f"{run_dir}/fold0/run.json")
    files.write_json(f"{run_dir}/fold0/run.json", {**info, "status": "running"})
    with pytest.raises(RunError, match=r"fold0/run.json: status 'running'"):
        load_run(run_dir, records)


def test_folds_with_different_embedding_sizes_are_refused(records, tmp_path):
    run_dir = make_run(str(tmp_path / "run"), records)
    make_run(run_dir, records, folds=("fold1",), dim=16)
    with pytest.raises(RunError, match=r"different model.embedding_dim \(fold0: 8, fold1: 16\)"):
        load_run(run_dir, records)
    files.remove(f"{run_dir}/fold1/config.yaml")  # found from the arrays when the config does not say
    with pytest.raises(RunError, match=r"embed to different sizes \{'fold0': 8, 'fold1': 16\}"):
        embed_runs([load_run(run_dir, records)], records, str(tmp_path / "out"), batch=4)


def test_nan_embeddings_name_the_model_and_image(records, tmp_path):
    run_dir = make_run(str(tmp_path / "run"), records, folds=("fold0",), nan=True)
    with pytest.raises(
        RunError, match=r"fold0/embedding.keras: NaN or infinite embeddings for 19 image\(s\)"
    ):
        embed_runs([load_run(run_dir, records)], records, str(tmp_path / "out"), batch=4)
    assert not files.exists(str(tmp_path / "out" / "cache"))  # nothing cached from a broken model


def test_cache_file_holds_names_and_meta(records, run_dir, tmp_path):
    run = load_run(run_dir, records)
    embed_runs([run], records, str(tmp_path), batch=4)
    data = np.load(cache_path(str(tmp_path), run.folds[1], flip=False))
    meta = json.loads(str(data["meta"]))
    assert meta["fold"] == "fold1" and meta["manifest_sha256"] == records.sha256 and meta["flip"] is False
    assert data["train_names"].shape == (19,) and data["test"].shape == (5, 8)


def test_folds_trained_with_different_flip_rules_are_refused_by_name(records, tmp_path):
    """Fold 0 trained with augment.flip=false, fold 1 by a second train call with the defaults: the run-level
    config.yaml says flip: true, but each fold's own config decides, so the mix is refused."""
    run_dir = make_run(str(tmp_path / "run"), records)
    files.write_text(f"{run_dir}/fold0/config.yaml", "model: {embedding_dim: 8}\naugment: {flip: false}\n")
    files.write_text(f"{run_dir}/config.yaml", "augment: {flip: true}\n")
    with pytest.raises(RunError, match=r"different augment.flip \(fold0: False, fold1: True\)"):
        load_run(run_dir, records)


def test_flip_tta_is_refused_for_folds_trained_without_mirrors(records, tmp_path):
    from tfwhale.inference.submission import PredictError
    from tfwhale.predict import check_flip_tta

    run_dir = make_run(str(tmp_path / "run"), records)
    for fold in ("fold0", "fold1"):
        files.write_text(
            f"{run_dir}/{fold}/config.yaml", "model: {embedding_dim: 8}\naugment: {flip: false}\n"
        )
    files.write_text(f"{run_dir}/config.yaml", "augment: {flip: true}\n")  # a stale run-level copy
    with pytest.raises(PredictError, match=r"fold0: flip TTA needs augment.flip=true"):
        check_flip_tta([load_run(run_dir, records)])
