"""The catalogue's database and image files under a kill -9: no recorded decision lost, no half photo."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tfwhale.serve.blobs import BlobStore
from tfwhale.serve.schema import SCHEMA_VERSION, SchemaError
from tfwhale.serve.store import ConflictError, Photo, Store, now

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A writer that adds photos and decides on them as fast as it can, printing each decision id once its
# transaction has committed: the parent kills it at a random moment.
WRITER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from tfwhale.serve.blobs import BlobStore
    from tfwhale.serve.store import Photo, Store, now

    store, blobs = Store(sys.argv[1]), BlobStore(sys.argv[1])
    i = 0
    while True:
        data = os.urandom(20000) + str(i).encode()
        sha = blobs.put(data)
        crop = blobs.put(data[:5000])
        with store.transaction() as conn:
            store.add_photo(conn, Photo(sha, "upload", f"p{i}.jpg", crop, "", None, now(), "w"))
        action = "register" if i % 3 == 0 else ("confirm" if i % 3 == 1 else "unresolved")
        individual = f"ind-{i // 3}"
        decision = store.decide(sha, action, individual, "n", "w", [], np.full(8, i, np.float32))
        print(decision, sha, flush=True)
        i += 1
    """
)


def _kill_during_writes(catalogue, wait: float) -> list[tuple[int, str]]:
    """Kill the writer `wait` seconds after its 8th committed decision (not after a fixed time from start:
    on a loaded machine its imports alone can take seconds); the decisions it reported before dying."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(catalogue)], stdout=subprocess.PIPE, text=True, env=env
    )
    lines = [proc.stdout.readline() for _ in range(8)]
    time.sleep(wait)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    lines += out.split("\n")
    # The kill can cut the last line short: only whole lines ("id sha\n") were reported.
    whole = [line.split() for line in lines if len(line.split()) == 2 and len(line.split()[1]) == 64]
    return [(int(decision), sha) for decision, sha in whole]


@pytest.mark.parametrize("wait", [0.3, 1.1])
def test_kill_9_mid_writes_loses_no_decision_and_leaves_no_half_photo(tmp_path, wait):
    catalogue = tmp_path / "catalogue"
    reported = _kill_during_writes(catalogue, wait)
    assert len(reported) > 5, "the writer made too little progress to test anything"
    conn = sqlite3.connect(catalogue / "catalogue.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    decided = dict(conn.execute("SELECT id, photo_sha256 FROM decisions").fetchall())
    for decision, sha in reported:  # every decision the writer saw committed is there
        assert decided.get(decision) == sha
    blobs = BlobStore(catalogue)
    for sha, crop, individual, embedding in conn.execute(
        "SELECT sha256, crop_sha256, individual_id, embedding FROM photos"
    ):
        for digest in (sha, crop):  # every photo row's files are there, whole
            assert hashlib.sha256(blobs.get(digest)).hexdigest() == digest
        if individual is not None:  # an assigned photo has its embedding and the decision that assigned it
            assert embedding is not None and len(embedding) == 8 * 4
            actions = conn.execute(
                "SELECT action FROM decisions WHERE photo_sha256 = ? AND action != 'unresolved'", (sha,)
            ).fetchall()
            assert len(actions) == 1
    for path in blobs.root.rglob("*.jpg"):  # no file under a hash name holds other (half-written) bytes
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
    registered = {r[0] for r in conn.execute("SELECT individual_id FROM decisions WHERE action='register'")}
    assert registered == {r[0] for r in conn.execute("SELECT id FROM individuals")}


def test_decisions_are_checked_in_one_transaction(tmp_path):
    store, blobs = Store(tmp_path), BlobStore(tmp_path)
    sha = blobs.put(b"photo")
    with store.transaction() as conn:
        store.add_photo(conn, Photo(sha, "upload", "a.jpg", sha, "", None, now(), ""))
    store.decide(sha, "register", "A", "", "r1", [], np.zeros(4, np.float32))
    with pytest.raises(ConflictError, match="already assigned to A"):
        store.decide(sha, "confirm", "A", "", "r2", [])
    with pytest.raises(ConflictError, match="not in the catalogue"):
        store.decide("0" * 64, "confirm", "A", "", "r2", [])
    assert [d["action"] for d in store.decisions(photo=sha)] == ["register"]  # the refused ones left nothing
    with pytest.raises(ValueError, match="action must be one of"):
        store.decide(sha, "delete", "A", "", "r2", [])


def test_schema_version_and_a_newer_database_is_refused(tmp_path):
    store = Store(tmp_path)
    assert store.conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    Store(tmp_path)  # opening again migrates nothing and keeps the data
    store.conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaError, match="newer than this tfwhale"):
        Store(tmp_path)


def test_blob_names_are_content_hashes(tmp_path):
    blobs = BlobStore(tmp_path)
    digest = blobs.put(b"abc")
    assert digest == hashlib.sha256(b"abc").hexdigest() and blobs.get(digest) == b"abc"
    assert blobs.put(b"abc") == digest
    with pytest.raises(ValueError, match="not a sha256"):
        blobs.path("../../etc/passwd")
    assert not blobs.has("../x")


def test_ctrl_c_stops_the_server_cleanly(serve_gallery, tmp_path):
    """`python -m tfwhale.serve` stopped with Ctrl-C: exit 0, a line saying the catalogue is kept, and
    no traceback (uvicorn shuts down, then raises the signal again as KeyboardInterrupt)."""
    import urllib.request

    from tests.browser_fixture import _free_port

    port = _free_port()
    command = [sys.executable, "-m", "tfwhale.serve", "--gallery", serve_gallery[1]]
    command += ["--catalogue", str(tmp_path / "catalogue"), "--port", str(port)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/inbox", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # a failure above: only the process this test started
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "stopped" in err and "keeps every decision" in err
