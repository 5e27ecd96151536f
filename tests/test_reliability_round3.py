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
