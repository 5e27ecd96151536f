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
    from tfwhale import identify
    from tfwhale.contracts.crop_box import parse_box_text
    from tfwhale.contracts.photo_crop import ImageSettings

    data = make_kaggle(tmp_path / "data")
    _set_column(data, "box", {1: "-1e308 0 1e308 1e308", 2: "1e400 0 5 5"})
    with caplog.at_level(logging.INFO):
        assert build(data, tmp_path / "out") == cli.EXIT_OK
    fallbacks = records.load_manifest(str(tmp_path / "out")).data["box_fallbacks"]
    assert sum(fallbacks.values()) >= 2, fallbacks
    photo = (data / "train_images" / "tr001.jpg").read_bytes()
    box = parse_box_text("-1e308 0 1e308 1e308")
    jpeg, image = identify.prepare_photo_bytes(photo, box, ImageSettings(32), "tr001.jpg")
    assert image.shape == (32, 32, 3) and jpeg[:2] == b"\xff\xd8"
