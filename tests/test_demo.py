"""The demo runs every stage as a user would and resumes instead of redoing finished stages."""

import subprocess
import sys

import pytest


def _demo(out: str) -> subprocess.CompletedProcess:
    args = ["--out", out, "--individuals", "30", "--epochs", "2", "--size", "64"]
    return subprocess.run(
        [sys.executable, "-m", "tfwhale.demo", *args, "--set", "data.image_size=64"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.mark.slow  # ~100 s alone (the README's first command end to end); `python3 dev.py test --slow`
def test_demo_end_to_end_then_resume(tmp_path):
    out = str(tmp_path / "demo")
    first = _demo(out)
    assert first.returncode == 0, first.stderr[-3000:]
    text = first.stdout
    assert "MAP@5 on the synthetic test set:" in text
    for step in (
        "python -m tfwhale.synthetic",
        "build-tfrecords",
        "python -m tfwhale.train",
        "python -m tfwhale.predict",
    ):
        assert f"  {step} " in text, step
    assert f"{out}/predict/submission.csv" in text and "examples.png" in text
    second = _demo(out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("(already done:") == 2  # synthetic data and records
    assert "already finished" in second.stderr  # trained folds are skipped
