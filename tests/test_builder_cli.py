"""build-tfrecords command line: help, input flags, exit codes and messages of the real console script."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tfrecords_builder import cli
from tfwhale.contracts import records

CONSOLE_SCRIPT = Path(sys.executable).with_name("build-tfrecords")


def make_data(root: Path, n_train: int = 8, n_test: int = 3) -> Path:
    (root / "train_images").mkdir(parents=True)
    (root / "test_images").mkdir()
    rng = np.random.default_rng(1)
    for i in range(n_train):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8)).save(root / "train_images" / f"a{i}.jpg")
    for i in range(n_test):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8)).save(root / "test_images" / f"b{i}.jpg")
    table = pd.DataFrame(
        {
            "image": [f"a{i}.jpg" for i in range(n_train)],
            "species": ["beluga"] * n_train,
            "individual_id": [f"w{i % 3}" for i in range(n_train)],
        }
    )
    table.to_csv(root / "train.csv", index=False)
    return root


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CONSOLE_SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_help_explains_usage_with_examples():
    result = subprocess.run(
        [sys.executable, "-m", "tfrecords_builder", "--help"], capture_output=True, text=True, check=True
    )
    for text in ("--data", "--boxes", "--resize {square,letterbox}", "examples:", "build-tfrecords verify"):
        assert text in result.stdout
    assert "exit codes" in result.stdout
    verify_help = subprocess.run(
        [sys.executable, "-m", "tfrecords_builder", "verify", "--help"], capture_output=True, text=True
    )
    assert verify_help.returncode == 0 and "sha256" in verify_help.stdout


def test_bad_command_lines_are_usage_errors():
    with pytest.raises(SystemExit) as missing_size:
        cli.main(["--data", "x", "--out", "y"])
    assert missing_size.value.code == 2
    with pytest.raises(SystemExit) as bad_quality:
        cli.main(["--data", "x", "--out", "y", "--size", "64", "--quality", "0"])
    assert bad_quality.value.code == 2
    with pytest.raises(SystemExit) as bad_size:
        cli.main(["--data", "x", "--out", "y", "--size", "-5"])
    assert bad_size.value.code == 2


def test_missing_inputs_are_named(tmp_path, caplog):
    assert cli.main(["--out", str(tmp_path / "o"), "--size", "32"]) == cli.EXIT_FATAL
    assert "pass --data DIR (Kaggle layout) or --train-csv" in caplog.text
    data = make_data(tmp_path / "data")
    (data / "test_images").rename(data / "elsewhere")
    assert cli.main(["--data", str(data), "--out", str(tmp_path / "o"), "--size", "32"]) == cli.EXIT_FATAL
    assert f"{data / 'test_images'}: test images folder not found" in caplog.text


def test_explicit_file_flags_replace_the_kaggle_layout(tmp_path, capsys):
    data = make_data(tmp_path / "somewhere")
    (data / "list.csv").write_text("image\nb2.jpg\n")
    out = tmp_path / "out"
    argv = [
        "--train-csv", str(data / "train.csv"), "--train-images", str(data / "train_images"),
        "--test-images", str(data / "test_images"), "--test-csv", str(data / "list.csv"),
        "--out", str(out), "--size", "32", "--folds", "2", "--workers", "1",
    ]  # fmt: skip
    assert cli.main(argv) == cli.EXIT_OK
    manifest = records.load_manifest(str(out))
    assert (manifest.n_folds, manifest.count("train"), manifest.count("test")) == (2, 8, 1)
    summary = capsys.readouterr().out
    assert "train     1" in summary and f"manifest: {out / 'manifest.json'}" in summary


def test_verify_of_an_unfinished_folder_fails(tmp_path, capsys):
    assert cli.main(["verify", str(tmp_path)]) == cli.EXIT_FATAL
    assert "manifest.json not found" in capsys.readouterr().out


def test_console_script_rejects_with_exit_3_using_two_workers(tmp_path):
    data = make_data(tmp_path / "data")
    (data / "train_images" / "a3.jpg").write_text("not a photo")
    out = tmp_path / "out"
    result = run_script("--data", str(data), "--out", str(out), "--size", "32", "--workers", "2")
    assert result.returncode == cli.EXIT_REJECTS, result.stderr
    assert "1 image(s) rejected" in result.stderr and "Traceback" not in result.stderr
    assert "rejected: 1 image(s) (see rejects.csv)" in result.stdout
    rejects = pd.read_csv(out / "rejects.csv")
    assert rejects.to_dict("records")[0]["image"] == "a3.jpg"
    assert rejects.to_dict("records")[0]["row"] == 5
    assert records.load_manifest(str(out)).count("train") == 7
    verify = run_script("verify", str(out))
    assert verify.returncode == 0 and "OK" in verify.stdout


def test_console_script_fatal_error_is_one_line_without_traceback(tmp_path):
    data = make_data(tmp_path / "data")
    (data / "train.csv").write_text("image,species,individual\na0.jpg,beluga,w1\n")
    result = run_script("--data", str(data), "--out", str(tmp_path / "out"), "--size", "32")
    assert result.returncode == cli.EXIT_FATAL
    assert "Traceback" not in result.stderr
    assert "missing column(s) ['individual_id']" in result.stderr
