"""Issue 10's seven faults, one test each (each fails without its fix), plus the pixel and UTF-8 extras."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.gcs_emulator import patched_environ, write_test_certificates
from tests.records_fixture import make_records
from tests.run_fixture import build_synthetic_records, make_run
from tests.test_builder_build import build, make_kaggle, save_photo
from tfrecords_builder import cli, lock
from tfrecords_builder.verify import verify_build
from tfwhale import identify, predict, train
from tfwhale.contracts import records
from tfwhale.core import files
from tfwhale.imaging.photo_crop import ImageError, ImageSettings, process_image
from tfwhale.inference.submission import PredictError, check_submission_text, submission_text

REPO = Path(__file__).resolve().parents[1]


def _set_label(data: Path, rows: dict[int, str]) -> None:
    """Give the CSV rows (0-based data rows) these individual_ids."""
    table = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False)
    for index, label in rows.items():
        table.loc[index, "individual_id"] = label
    table.to_csv(data / "train.csv", index=False)


# 1. labels that break the submission format ----------------------------------------------------------


def test_labels_with_separators_are_refused_with_row_and_character(tmp_path, caplog):
    data = make_kaggle(tmp_path / "data")
    _set_label(data, {3: "whale 5da4", 7: "pod,9a94"})
    assert build(data, tmp_path / "out") == cli.EXIT_FATAL
    assert "train.csv: row 5, field 'individual_id': 'whale 5da4' contains ' ' (SPACE)" in caplog.text
    assert "2 rows in all, e.g. rows 5, 9" in caplog.text
    assert not (tmp_path / "out" / records.MANIFEST_NAME).exists()

    unicode_ids = make_kaggle(tmp_path / "unicode")
    _set_label(unicode_ids, {i: f"baleine_été_{i % 6}_鯨" for i in range(30)})
    assert build(unicode_ids, tmp_path / "out2") == cli.EXIT_OK
    assert "baleine_été_0_鯨" in records.load_manifest(str(tmp_path / "out2")).individuals


def test_every_submission_row_splits_back_into_its_labels():
    assert records.label_problem("baleine_été_鯨") is None
    for bad in ("whale 5da4", "pod,9a94", 'a"b', "tab\there", "nbsp\u00a0id", records.NEW_INDIVIDUAL):
        assert records.label_problem(bad), bad
    answers = {"a,b.jpg": ["x1", "new_individual", "y_é", "z", "w"], "c.jpg": ["x1", "y_é"]}
    text = submission_text(["a,b.jpg", "c.jpg"], answers)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["image", "predictions"], ["a,b.jpg", "x1 new_individual y_é z w"], ["c.jpg", "x1 y_é"]]
    with pytest.raises(PredictError, match=r"'whale 5da4'.*contains ' '"):
        submission_text(["c.jpg"], {"c.jpg": ["whale 5da4", "x"]})
    with pytest.raises(PredictError, match="line 2 has 3 fields"):
        check_submission_text("image,predictions\nq.jpg,pod,9a94 x\n", "sub.csv")


# 2. a corrupted finished shard -------------------------------------------------------------------------


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupted_finished_shard_is_rebuilt_not_reused(tmp_path, caplog):
    data, out = make_kaggle(tmp_path / "data"), tmp_path / "out"
    assert build(data, out) == cli.EXIT_OK
    shard = sorted(out.glob("train-fold0-*.tfrec"))[0]
    original = shard.read_bytes()
    _flip_byte(shard)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert build(data, out) == cli.EXIT_OK
    assert f"{shard}: size or sha256 differs" in caplog.text and "rebuilding it" in caplog.text
    assert shard.read_bytes() == original
    assert verify_build(str(out)) == []


@pytest.mark.slow
def test_a_record_the_trainer_cannot_read_names_its_shard(tmp_path, caplog):
    root = make_records(tmp_path, size=32)
    manifest = records.load_manifest(root)
    name = manifest.shards("train")[0]["name"]
    _flip_byte(Path(root) / name)
    overrides = ["model.backbone=TinyConvNet", "train.epochs=1", "data.batch_size=4", "train.verbose=0"]
    argv = ["--config", "tiny_cpu", "--records", root, "--out", str(tmp_path / "run"), "--full"]
    assert train.main(argv + [x for o in overrides for x in ("--set", o)]) == 1
    assert f"damaged shard(s): {name}" in caplog.text
    assert f"build-tfrecords verify {root}" in caplog.text


def test_read_error_message_names_the_damaged_shard(tmp_path):
    root = make_records(tmp_path, size=32)
    name = records.load_manifest(root).shards("test")[0]["name"]
    _flip_byte(Path(root) / name)
    error = RuntimeError("{{function_node x}} corrupted record at 12 [Op:IteratorGetNext] name: ")
    message = records.read_error_message(root, error)
    assert message.startswith(f"{root}: a record cannot be read (corrupted record at 12)")
    assert f"damaged shard(s): {name}." in message and f"`build-tfrecords verify {root}`" in message


# 3. orphaned workers -----------------------------------------------------------------------------------

_ORPHAN_SCRIPT = """
import sys, time
sys.path.insert(0, {repo!r})
from tfrecords_builder.workers import spawn_pool
if __name__ == "__main__":
    pool = spawn_pool(2)
    futures = [pool.submit(time.sleep, 120) for _ in range(2)]
    while len(pool._processes) < 2:
        time.sleep(0.05)
    time.sleep(1.0)  # the watchdog threads start with the workers
    print(" ".join(str(pid) for pid in pool._processes), flush=True)
    time.sleep(120)
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited orphan waits for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_image_workers_exit_when_the_build_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(_ORPHAN_SCRIPT.format(repo=str(REPO)))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_running(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in workers if _running(pid)]
        for pid in left:  # clean up after a failure: only the processes this test started
            os.kill(pid, signal.SIGKILL)
        assert not left, f"workers {left} outlived their killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


# 4. two builds into one --out --------------------------------------------------------------------------


def _lock_body(pid: int, host: str, heartbeat: float) -> str:
    return json.dumps(
        {"host": host, "pid": pid, "started": "earlier", "heartbeat": "earlier", "heartbeat_unix": heartbeat}
    )


def test_a_second_build_into_the_same_out_stops_at_once(tmp_path, caplog):
    data, out = make_kaggle(tmp_path / "data"), tmp_path / "out"
    out.mkdir()
    held = out / lock.LOCK_NAME
    held.write_text(_lock_body(os.getpid(), socket.gethostname(), time.time()))
    assert build(data, out) == cli.EXIT_FATAL
    assert f"is being written by another build-tfrecords (pid {os.getpid()} on host" in caplog.text
    assert list(out.iterdir()) == [held]  # nothing touched

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    held.write_text(_lock_body(dead.pid, socket.gethostname(), time.time()))  # killed build, this host
    assert build(data, out) == cli.EXIT_OK
    assert "taking over a stale lock" in caplog.text and not held.exists()

    held.write_text(_lock_body(1, "another-host", time.time() - lock.STALE_AFTER_S - 60))
    assert lock.stale_reason(json.loads(held.read_text())).startswith("no heartbeat for 16 minutes")
    held.write_text(_lock_body(1, "another-host", time.time()))
    assert lock.stale_reason(json.loads(held.read_text())) is None


def test_the_lock_is_held_while_building_and_released_after(tmp_path):
    out = str(tmp_path / "out")
    with lock.build_lock(out):
        holder = files.read_json(lock.lock_path(out))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(ValueError, match="being written by another build"):
            lock.acquire(out)
    assert not os.path.exists(lock.lock_path(out))


def test_the_lock_works_on_gcs(gcs_bucket):
    out = f"{gcs_bucket}/records"
    with lock.build_lock(out):
        assert files.read_json(lock.lock_path(out))["pid"] == os.getpid()
        with pytest.raises(ValueError, match=f"{out} is being written by another build-tfrecords"):
            lock.acquire(out)
    assert not files.exists(lock.lock_path(out))


@pytest.mark.slow
def test_two_builds_started_together_one_builds_the_other_stops(tmp_path):
    """The second build starts once the first holds the lock: it stops naming the holder, or, when the
    first finished meanwhile (a quiet machine builds 60 small photos in seconds), it reuses every shard.
    Never two writers on one --out."""
    data, out = make_kaggle(tmp_path / "data", n_train=60), tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--size", "48", "--images-per-shard", "4"]
    command = [sys.executable, "-m", "tfrecords_builder", *argv, "--workers", "2"]

    def start() -> subprocess.Popen:
        return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start()
    deadline = time.monotonic() + 300
    while (
        not os.path.exists(lock.lock_path(str(out))) and first.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    second = start()
    (_, err1), (out2, err2) = (b.communicate(timeout=600) for b in (first, second))
    code1, code2 = first.returncode, second.returncode
    assert code1 == cli.EXIT_OK, err1
    assert "Traceback" not in err2
    if code2 == cli.EXIT_FATAL:
        assert "is being written by another build-tfrecords" in err2
    else:
        assert code2 == cli.EXIT_OK and re.search(r"reused (\d+) of \1 shard", out2), (out2, err2)
    assert verify_build(str(out)) == []


# 5 and 6. identify per photo; a predict rerun never leaves a stale mix ----------------------------------


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    data, records_dir = build_synthetic_records(root)
    run_dir = make_run(str(root / "run"), records.load_manifest(records_dir), dim=16)
    out = str(root / "predict")
    assert predict.main(["--runs", run_dir, "--records", records_dir, "--out", out, "--examples", "0"]) == 0
    return data, records_dir, run_dir, out


def test_identify_answers_every_photo_it_can_and_says_which_failed(gallery, tmp_path, capsys):
    data, _, run_dir, out = gallery
    photos = sorted(files.glob(f"{data}/test_images/*.jpg"))[:3]
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(Path(photos[0]).read_bytes()[:300])
    asked = [photos[0], str(truncated), photos[1], photos[2]]
    assert identify.main([*asked, "--runs", run_dir, "--gallery", out, "--json"]) == 3
    answers = json.loads(capsys.readouterr().out)
    assert [a["photo"] for a in answers] == asked
    assert [a["error"] is None for a in answers] == [True, False, True, True]
    assert "truncated.jpg: cannot decode image" in answers[1]["error"] and answers[1]["predictions"] == []
    assert all(len(a["predictions"]) == 5 for a in answers if a["error"] is None)

    assert identify.main([photos[0], str(truncated), "--gallery", out]) == 3
    table = capsys.readouterr().out
    assert "error: " in table and table.count("\n  1. ") == 1
    assert identify.main([str(truncated), str(tmp_path / "absent.jpg"), "--gallery", out]) == 1


def test_an_interrupted_predict_rerun_leaves_no_old_outputs(gallery, tmp_path, monkeypatch):
    _, records_dir, run_dir, first = gallery
    out = str(tmp_path / "predict")
    shutil.copytree(first, out)
    old = ("submission.csv", "embeddings.npz", "report.json", "gallery.json")
    assert all(os.path.exists(f"{out}/{name}") for name in old)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "rank_test", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict.main(["--runs", run_dir, "--records", records_dir, "--out", out, "--examples", "0"])
    assert [name for name in old if os.path.exists(f"{out}/{name}")] == []
    assert os.listdir(f"{out}/cache")  # the embeddings cache is kept for the next run
    assert identify.main([str(tmp_path / "any.jpg"), "--gallery", out]) == 1  # refused: unfinished


# 7. storage outage -------------------------------------------------------------------------------------


def test_a_storage_outage_ends_in_one_line_that_says_to_rerun(gcs_bucket, tmp_path, caplog):
    data = make_kaggle(tmp_path / "data", n_train=12, n_test=2)
    out = f"{gcs_bucket}/records"
    outage = {"CURL_CA_BUNDLE": write_test_certificates(str(tmp_path))[0]}  # every gs:// request fails
    with patched_environ(outage):
        assert build(data, out) == cli.EXIT_FATAL
        assert train.main(["--records", out, "--out", str(tmp_path / "run")]) == 1
        argv = ["--runs", str(tmp_path / "run"), "--records", out, "--out", str(tmp_path / "p")]
        assert predict.main(argv) == 1
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 3, lines
    for line in lines:
        assert line.startswith(f"storage error on {gcs_bucket}/") and "\n" not in line
        assert line.endswith("run the same command again to resume")
    assert build(data, out) == cli.EXIT_OK  # the outage is over: the same command completes


# extras: decompression-bomb limit, non-UTF-8 CSV -------------------------------------------------------


def test_photos_above_max_pixels_are_refused_with_the_flag_named(tmp_path):
    photo = tmp_path / "p.jpg"
    save_photo(photo, 0, size=(200, 100))
    with pytest.raises(ImageError, match=r"200x100 = 20,000 pixels, above the limit of 19,999.*--max-pixels"):
        process_image(photo.read_bytes(), None, ImageSettings(32, max_pixels=19_999))
    assert process_image(photo.read_bytes(), None, ImageSettings(32, max_pixels=20_000))[1].width == 200
    data = make_kaggle(tmp_path / "data", n_train=12, n_test=2)
    assert build(data, tmp_path / "out", "--max-pixels", "5000") == cli.EXIT_REJECTS
    assert "image too large" in (tmp_path / "out" / records.REJECTS_NAME).read_text()


def test_a_non_utf8_csv_names_its_line(tmp_path, caplog):
    data = make_kaggle(tmp_path / "data", n_train=12, n_test=2)
    lines = (data / "train.csv").read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b"whale", "baleine_\u00e9".encode("latin-1"), 1)
    (data / "train.csv").write_bytes(b"\n".join(lines))
    assert build(data, tmp_path / "out") == cli.EXIT_FATAL
    assert "train.csv: line 5: not UTF-8 (bytes b'\\xe9" in caplog.text
