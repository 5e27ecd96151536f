"""Issue 23 (reliability and security, round 3): the builder, training and CLI items, one test each."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.test_builder_build import build, make_kaggle
from tfrecords_builder import cli
from tfwhale.contracts import records

REPO = Path(__file__).resolve().parents[1]


def _set_column(data: Path, column: str, rows: dict[int, str]) -> None:
    table = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False)
    for index, value in rows.items():
        table.loc[index, column] = value
    table.to_csv(data / "train.csv", index=False, quoting=csv.QUOTE_ALL)  # a bare '\r' would split a row


# Fails 2: one id rule, in the builder ------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["x'y", "=1+1", "..", "a/b", "<svg/onload=alert(1)>"])
def test_the_build_refuses_ids_the_id_rule_refuses(tmp_path, caplog, bad):
    data = make_kaggle(tmp_path / "data")
    _set_column(data, "individual_id", {2: bad})
    assert build(data, tmp_path / "out") == cli.EXIT_FATAL
    assert f"train.csv: row 4, field 'individual_id': {bad!r}" in caplog.text
    assert "letters (any alphabet)" in caplog.text or "starts with" in caplog.text


# Fails 6: control characters in species, at the door -----------------------------------------------


def test_the_build_refuses_a_species_with_a_carriage_return(tmp_path, caplog):
    data = make_kaggle(tmp_path / "data")
    _set_column(data, "species", {5: "orca\rx"})
    assert build(data, tmp_path / "out") == cli.EXIT_FATAL
    assert "row 7, field 'species': 'orca\\rx' contains the control character" in caplog.text


# Fails 8: an absurd box is a bad box everywhere -------------------------------------------------------


def test_an_absurd_box_is_counted_as_a_bad_box_in_build_and_identify(tmp_path, caplog):
    from tfwhale.imaging.crop_box import parse_box_text
    from tfwhale.imaging.photo_crop import ImageSettings, process_image

    data = make_kaggle(tmp_path / "data")
    _set_column(data, "box", {1: "-1e308 0 1e308 1e308", 2: "1e400 0 5 5"})
    with caplog.at_level(logging.INFO):
        assert build(data, tmp_path / "out") == cli.EXIT_OK
    fallbacks = records.load_manifest(str(tmp_path / "out")).data["box_fallbacks"]
    assert sum(fallbacks.values()) >= 2, fallbacks
    photo = (data / "train_images" / "tr001.jpg").read_bytes()
    box = parse_box_text("-1e308 0 1e308 1e308")
    jpeg, info = process_image(photo, box, ImageSettings(32))  # the crop QueryPath.crop runs
    assert info.fallback and jpeg[:2] == b"\xff\xd8"  # whole photo, counted as a fallback


# Fails 7: a resume on other records or another config ------------------------------------------------

TINY = [
    "--config", "tiny_cpu", "--set", "data.image_size=32", "--set", "model.backbone=TinyConvNet",
    "--set", "data.batch_size=4", "--set", "model.embedding_dim=16", "--set", "train.epochs=2",
]  # fmt: skip


def _train(rec: str, out: str, *extra: str) -> int:
    from tfwhale import train

    return train.main([*TINY, "--records", rec, "--out", out, "--fold", "0", *extra])


def test_a_resume_on_other_records_or_another_config_is_refused(tmp_path, caplog, monkeypatch):
    from tests.records_fixture import make_records
    from tfwhale import train
    from tfwhale.core import files
    from tfwhale.training.resume_check import STARTED_NAME

    rec_a = make_records(tmp_path / "a", n_individuals=6, size=32, n_folds=2)
    rec_b = make_records(tmp_path / "b", n_individuals=5, size=32, n_folds=2)
    trained = []

    def fake_train_fold(cfg, manifest, plan, runtime):  # the checks run before any training
        trained.append(manifest.root)
        return SimpleNamespace(fold=plan.name, epochs=0, best={})  # what train.main reads of a RunRecord

    monkeypatch.setattr(train, "train_fold", fake_train_fold)
    out = str(tmp_path / "run")
    assert _train(rec_a, out) == 0
    assert _train(rec_b, out) == 1
    assert f"records {rec_a} (manifest " in caplog.text and f"-> {rec_b} (manifest " in caplog.text
    assert "--overwrite" in caplog.text and "new --out" in caplog.text
    caplog.clear()
    fold = Path(out) / "fold0"
    (fold / "run.json").write_text('{"status": "finished", "fold": "fold0", "epochs": 2, "best": null}')
    assert _train(rec_a, out, "--set", "train.epochs=3") == 1  # a finished fold is not skipped silently
    assert "train.epochs 2 -> 3" in caplog.text and "already finished" not in caplog.text
    # a fold folder from before started_on.json: its config.yaml and run.json tell
    from tfwhale.core.config import load_config, save_config
    from tfwhale.feed.data import with_records_image_size

    os.remove(fold / STARTED_NAME)
    overrides = [TINY[i + 1] for i in range(2, len(TINY), 2)]
    cfg = with_records_image_size(load_config("tiny_cpu", overrides), records.load_manifest(rec_a))
    save_config(cfg, str(fold / "config.yaml"))
    manifest_a = records.load_manifest(rec_a)
    from tfwhale.contracts.run_folder import RecordsRef, RunRecord

    refs = RecordsRef(rec_a, manifest_a.sha256, manifest_a.labels_sha256, manifest_a.n_folds, 32)
    files.write_json(str(fold / "run.json"), RunRecord("fold0", 0, [1], 2, refs).to_json())
    caplog.clear()
    assert _train(rec_b, out) == 1 and f"-> {rec_b}" in caplog.text
    assert _train(rec_a, out) == 0  # the same inputs: skipped as finished
    assert _train(rec_b, out, "--overwrite") == 0
    assert trained == [rec_a, rec_b]
    assert json.loads((fold / STARTED_NAME).read_text())["records"]["root"] == rec_b


# Partly holds: CLI ---------------------------------------------------------------------------------


def test_more_folds_than_photos_is_refused(tmp_path, caplog):
    data = make_kaggle(tmp_path / "data", n_train=6, n_test=2)
    assert build(data, tmp_path / "out", "--folds", "10") == cli.EXIT_FATAL
    assert (
        "--folds 10: only 6 usable training photo(s)" in caplog.text
        and "use --folds 6 or fewer" in caplog.text
    )
    assert not (tmp_path / "out" / records.MANIFEST_NAME).exists()


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("model.embedding_dim=0", "model.embedding_dim=0 must be at least 1"),
        ("model.arc_m=1e400", "model.arc_m expects float"),
        ("train.lr_max_per_sample=nan", "train.lr_max_per_sample expects float"),
        ("model.arc_m=2.0", "model.arc_m=2.0 must be in [0, 1.5)"),
        ("model.arc_s=0", "model.arc_s=0.0 must be > 0"),
    ],
)
def test_config_values_that_slipped_through_are_refused(override, words):
    from tfwhale.core.config import ConfigError, load_config

    with pytest.raises(ConfigError) as raised:
        load_config("tiny_cpu", [override])
    assert words in str(raised.value)


def test_identify_names_a_missing_embedding_model_and_a_missing_run_folder(serve_gallery, tmp_path, caplog):
    from tfwhale import identify
    from tfwhale.core import files

    data, out = serve_gallery
    run_dir = files.read_json(f"{out}/gallery.json")["runs"][0]["run_dir"]
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "fold0" / "embedding.keras").unlink()
    photo = sorted(Path(data, "test_images").glob("*.jpg"))[0]
    assert identify.main([str(photo), "--gallery", out, "--runs", str(copy)]) == 1
    assert f"{copy}/fold0/embedding.keras: missing" in caplog.text and "Traceback" not in caplog.text
    caplog.clear()
    assert identify.main([str(photo), "--gallery", out, "--runs", str(tmp_path / "gone")]) == 1
    assert f"{tmp_path / 'gone'}: run folder not found" in caplog.text
    assert "not the fold the gallery" not in caplog.text


def test_a_read_only_out_is_one_clear_line_in_build_train_and_predict(tmp_path, caplog, serve_gallery):
    from tests.read_only import read_only_folder
    from tests.records_fixture import make_records
    from tfwhale import predict

    data = make_kaggle(tmp_path / "data")
    rec = make_records(tmp_path / "rec", n_individuals=6, size=32, n_folds=2)
    with read_only_folder(tmp_path / "ro") as out:
        assert build(data, out) == cli.EXIT_FATAL
        assert f"--out {out}: cannot write there" in caplog.text
        caplog.clear()
        assert _train(rec, str(out)) == 1
        assert f"--out {out}: cannot write there" in caplog.text
        caplog.clear()
        gallery = serve_gallery[1]
        run_dir = json.loads(Path(gallery, "gallery.json").read_text())["runs"][0]["run_dir"]
        records_root = json.loads(Path(gallery, "gallery.json").read_text())["records_root"]
        argv = ["--runs", run_dir, "--records", records_root, "--out", str(out), "--examples", "0"]
        assert predict.main(argv) == 1
        assert f"--out {out}: cannot write there" in caplog.text


# Partly holds: installed without TensorFlow / the serve extra ----------------------------------------


def _without(modules: list[str], code: str) -> subprocess.CompletedProcess:
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in modules)
    script = f"import sys, runpy; {blocked}; {code}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.parametrize("module", ["tfwhale.train", "tfwhale.predict", "tfwhale.identify"])
def test_without_tensorflow_a_command_names_the_extra(module):
    done = _without(
        ["tensorflow"],
        f"sys.argv = ['x', '--help']; runpy.run_module({module!r}, run_name='__main__')",
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "pip install 'tfwhale[cpu]'" in done.stderr and "'tensorflow'" in done.stderr


def test_without_tensorflow_a_build_names_the_extra_and_its_help_works(tmp_path):
    data = make_kaggle(tmp_path / "data")
    code = "from tfrecords_builder.cli import main; sys.exit(main(sys.argv[1:]))"
    helped = _without(["tensorflow"], f"sys.argv = ['x', '--help']; {code}")
    assert helped.returncode == 0 and "--size" in helped.stdout, helped.stderr[-2000:]
    argv = ["x", "--data", str(data), "--out", str(tmp_path / "out"), "--size", "32", "--workers", "1"]
    built = _without(["tensorflow"], f"sys.argv = {argv!r}; {code}")
    assert built.returncode == 1 and "Traceback" not in built.stderr, built.stderr[-2000:]
    assert "pip install 'tfwhale[cpu]'" in built.stderr


def test_without_the_serve_extra_serve_help_works_and_a_start_names_the_extra(tmp_path):
    blocked = ["starlette", "fastapi", "uvicorn"]
    code = "runpy.run_module('tfwhale.serve', run_name='__main__')"
    helped = _without(blocked, f"sys.argv = ['x', '--help']; {code}")
    assert helped.returncode == 0 and "--allowed-host" in helped.stdout, helped.stderr[-2000:]
    argv = ["x", "--gallery", str(tmp_path), "--catalogue", str(tmp_path / "c")]
    started = _without(blocked, f"sys.argv = {argv!r}; {code}")
    assert started.returncode == 1 and "pip install 'tfwhale[serve]'" in started.stderr, started.stderr[
        -2000:
    ]
    assert not (tmp_path / "c").exists()


def test_rejects_csv_quotes_carriage_returns_in_names_and_reasons(tmp_path):
    from tfrecords_builder.errors import Reject
    from tfrecords_builder.manifest import write_rejects

    rejects = [Reject("a\rb.jpg", 3, "box", "malformed box '1 2\r3 4'"), Reject("c.jpg", None, "image", "x")]
    path = write_rejects(str(tmp_path), rejects)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["image", "row", "field", "reason"],
        ["a\rb.jpg", "3", "box", "malformed box '1 2\r3 4'"],
        ["c.jpg", "", "image", "x"],
    ]
