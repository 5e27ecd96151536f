"""Issue 23: the catalogue app under hostile input (Host, ids, bodies, CSVs, limits, start errors)."""

from __future__ import annotations

import csv
import io
import json
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra (pip install -e .[serve])")
from fastapi.testclient import TestClient
from PIL import Image

from tests.serve_fixture import photo_bytes
from tfwhale.serve import startup
from tfwhale.serve.app import create_app
from tfwhale.serve.catalogue import Catalogue
from tfwhale.serve.security import allowed_host_names

ORIGIN = "http://testserver"
HOSTS = allowed_host_names("127.0.0.1", ["testserver"])


def _client(catalogue, **kwargs) -> TestClient:
    client = TestClient(create_app(catalogue, reviewer="tester", **{"hosts": HOSTS, **kwargs}))
    client.get("/")
    client.catalogue = catalogue
    return client


@pytest.fixture
def client(serve_gallery, tmp_path):
    return _client(Catalogue(serve_gallery[1], str(tmp_path / "catalogue")))


def _csrf(client) -> str:
    return next(value for name, value in client.cookies.items() if name.startswith("tfwhale_csrf"))


def _headers(client, origin: str = ORIGIN) -> dict[str, str]:
    return {"X-CSRF-Token": _csrf(client), "Origin": origin}


def _upload(client, data: bytes, box: str = ""):
    files = {"photo": ("p.jpg", data, "image/jpeg")}
    return client.post("/api/identify", files=files, data={"box": box}, headers=_headers(client))


def _photo(html: str) -> str:
    return html.split('data-photo="', 1)[1][:64]


def _decide(client, photo: str, action: str, individual: str = "", **fields):
    body = {"photo": photo, "action": action, "individual": individual, "scores": [], **fields}
    return client.post("/api/decide", json=body, headers=_headers(client))


# Fails 1: DNS rebinding --------------------------------------------------------------------------------


def test_a_request_naming_another_host_is_refused_before_routing(serve_gallery, tmp_path):
    catalogue = Catalogue(serve_gallery[1], str(tmp_path / "c"))
    app = create_app(catalogue, hosts=allowed_host_names("127.0.0.1", ["whales.lab"]))
    client = TestClient(app, base_url="http://127.0.0.1:8101")
    assert client.get("/").status_code == 200
    evil = {"Host": "evil.example:8101"}
    page = client.get("/", headers=evil)
    assert page.status_code == 400 and "unknown Host 'evil.example'" in page.text
    assert "csrf" not in page.text and "--allowed-host" in page.text
    assert client.get("/export/decisions.csv", headers=evil).status_code == 400
    body = {"photo": "0" * 64, "action": "register", "individual": "Evil-1"}
    headers = {**evil, "Origin": "http://evil.example:8101", "X-CSRF-Token": "x"}
    assert client.post("/api/decide", json=body, headers=headers).status_code == 400
    for good in ("localhost:8101", "[::1]:8101", "WHALES.lab", "127.0.0.1"):
        assert client.get("/", headers={"Host": good}).status_code == 200, good
    assert catalogue.store.individual("Evil-1") is None


# Fails 2: one id rule --------------------------------------------------------------------------------


def test_the_id_rule_allows_any_alphabet_and_refuses_markup_paths_and_formulas(client):
    from tfwhale.contracts.individual_id import id_problem

    assert id_problem("baleine_été_鯨") is None and id_problem("cadddb1636b9") is None
    for bad in ("x'y", "=1+1", "..", "a/b", "<svg/onload=alert(1)>", "-x", "a b", "a\rb", "x" * 65):
        assert id_problem(bad), bad
        photo = _photo(_upload(client, photo_bytes(hash(bad) % 1000 + 100)).text)
        answer = _decide(client, photo, "register", bad)
        assert answer.status_code == 400 and answer.json()["message"].startswith("individual id"), bad
    photo = _photo(_upload(client, photo_bytes(31)).text)
    assert _decide(client, photo, "register", "baleine_été_鯨").json()["ok"]
    assert client.get("/individuals/baleine_%C3%A9t%C3%A9_%E9%AF%A8").status_code == 200


def test_an_older_catalogue_with_refused_ids_is_reported_and_keeps_working(client, caplog):
    with client.catalogue.store.transaction() as conn:
        conn.execute(
            "INSERT INTO individuals (id, species, origin, created_at) VALUES ('a/b', '', 'registered', 'x')"
        )
    assert startup.report_refused_ids(client.catalogue.store.individual_ids()) == ["a/b"]
    assert "holds 1 individual id(s) that the id rule" in caplog.text and "'a/b'" in caplog.text
    page = client.get("/individuals/a%2Fb")  # the id is one encoded path segment
    assert page.status_code == 200 and "a/b" in page.text
    photo = _photo(_upload(client, photo_bytes(32)).text)
    assert _decide(client, photo, "confirm", "a/b").json()["ok"]  # an existing id stays usable
    assert 'href="/individuals/a%2Fb"' in client.get(f"/photos/{photo}").text


# Fails 3: export's build command ----------------------------------------------------------------------


def test_the_printed_build_command_runs_as_printed(client, tmp_path):
    import shlex

    from tfrecords_builder import cli
    from tfwhale.contracts.records import load_manifest

    photo = _photo(_upload(client, photo_bytes(33)).text)
    assert _decide(client, photo, "register", "Nova-1").json()["ok"]
    answer = client.post("/api/export", json={}, headers=_headers(client)).json()
    folder = Path(answer["folder"])
    boxes = folder / "boxes.csv"  # the gallery originals' boxes (the records were built with boxes)
    assert ("--boxes" in answer["command"]) == boxes.exists()
    assert not boxes.exists() or len(boxes.read_text().splitlines()) > 1  # never a header-only one
    argv = shlex.split(answer["command"].replace("RECORDS_DIR", str(tmp_path / "rebuilt")))
    assert argv[0] == "build-tfrecords"
    size = client.catalogue.engine.manifest.image.size
    assert argv[argv.index("--size") + 1] == str(size)
    assert cli.main(argv[1:]) == cli.EXIT_OK
    rebuilt = load_manifest(str(tmp_path / "rebuilt"))
    assert rebuilt.image_size == size and "Nova-1" in rebuilt.individuals
    boxed = _photo(_upload(client, photo_bytes(34), box="10 10 60 60").text)
    assert _decide(client, boxed, "register", "Nova-2").json()["ok"]
    answer = client.post("/api/export", json={}, headers=_headers(client)).json()
    assert "--boxes" in answer["command"] and (Path(answer["folder"]) / "boxes.csv").exists()


# Fails 6: CSVs and control characters ---------------------------------------------------------------


def test_decisions_csv_survives_carriage_returns_and_guards_every_formula_start(client):
    from tfwhale.core.csv_text import spreadsheet_safe

    photo = _photo(_upload(client, photo_bytes(35)).text)
    note = "first line\rsecond\r\nthird"
    assert _decide(client, photo, "unresolved", note=note, reviewer="Ann").json()["ok"]
    rows = list(csv.reader(io.StringIO(client.get("/export/decisions.csv").text)))
    assert rows[1][2] == "Ann" and rows[1][6] == note and len(rows) == 2
    for start in ("=", "+", "-", "@", "\t", "\r", "|"):
        assert spreadsheet_safe(start + "cmd") == "'" + start + "cmd"
    refused = _decide(client, photo, "register", "Cr-1", species="orca\rx")
    assert refused.status_code == 422 and "control character" in refused.json()["message"]
    refused = _decide(client, photo, "unresolved", reviewer="Ann\rEve")
    assert refused.status_code == 422


def test_a_species_with_a_carriage_return_cannot_split_an_exported_row(client):
    from tfwhale.core.csv_text import csv_text

    text = csv_text([["image", "species", "individual_id"], ["a.jpg", "orca\rx", "Id-1"]])
    assert list(csv.reader(io.StringIO(text))) == [
        ["image", "species", "individual_id"],
        ["a.jpg", "orca\rx", "Id-1"],
    ]


# Fails 8: an absurd box is a bad box in serve too -----------------------------------------------------


def test_an_upload_with_an_absurd_box_is_identified_on_the_whole_photo(client):
    answer = _upload(client, photo_bytes(38), box="-1e308 0 1e308 1e308")
    assert answer.status_code == 200, answer.text
    assert client.catalogue.store.photo(_photo(answer.text)) is not None


# Partly holds: bodies, decodes, chunked limit -------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[]", b"null", b"", b"[" * 3000 + b"]" * 3000, b'{"scores": 5}', b"SCORES"],
    ids=["invalid", "list", "null", "empty", "deep", "scores-5", "huge-scores"],
)
def test_malformed_decide_bodies_get_a_4xx_with_a_message(client, raw):
    photo = _photo(_upload(client, photo_bytes(36)).text)
    if raw == b'{"scores": 5}':
        raw = json.dumps({"photo": photo, "action": "unresolved", "scores": 5}).encode()
    if raw == b"SCORES":
        scores = [{"label": "x", "similarity": 0.5}] * 200_000
        raw = json.dumps({"photo": photo, "action": "unresolved", "scores": scores}).encode()
    headers = {**_headers(client), "Content-Type": "application/json"}
    answer = client.post("/api/decide", content=raw, headers=headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["ok"] is False and answer.json()["message"].startswith("request body")
    assert client.catalogue.store.decisions(photo=photo) == []


def test_an_upload_of_too_many_pixels_is_refused_from_its_header(client):
    image = Image.new("1", (15000, 10000))
    out = io.BytesIO()
    image.save(out, "PNG")
    answer = _upload(client, out.getvalue())
    assert answer.status_code == 413 and "150,000,000 pixels" in answer.text and "--max-pixels" in answer.text


def test_decodes_running_at_once_are_bounded(client, monkeypatch):
    from tfwhale.serve import app as app_module

    running, most = [0], [0]
    lock = threading.Lock()
    real = client.catalogue.upload

    def slow_upload(*args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return real(*args)

    monkeypatch.setattr(client.catalogue, "upload", slow_upload)
    threads = [threading.Thread(target=_upload, args=(client, photo_bytes(40 + i))) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= most[0] <= app_module.DECODES_AT_ONCE


def _live(app):
    """uvicorn serving `app` in a thread on a free loopback port: (server, port)."""
    import uvicorn

    sock = startup.bind_port("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "the app did not start"
        time.sleep(0.05)
    return server, sock.getsockname()[1]


def test_a_chunked_body_is_cut_off_at_the_limit_as_it_arrives(client):
    """A chunked body has no Content-Length: the app must count it as it arrives and stop reading."""
    import select
    import urllib.request

    server, port = _live(client.app)
    try:
        cookie = urllib.request.urlopen(f"http://127.0.0.1:{port}/").headers["set-cookie"].split(";")[0]
        connection = socket.create_connection(("127.0.0.1", port))
        head = (
            f"POST /api/identify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n"
            f"Cookie: {cookie}\r\nX-CSRF-Token: {cookie.split('=', 1)[1]}\r\n"
            "Transfer-Encoding: chunked\r\nContent-Type: multipart/form-data; boundary=b0\r\n\r\n"
        )
        part = b'--b0\r\nContent-Disposition: form-data; name="photo"; filename="big.jpg"\r\n\r\n'
        connection.sendall(head.encode() + b"%x\r\n" % len(part) + part + b"\r\n")
        chunk = b"0" * (1 << 20)
        framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        sent = 0
        try:
            while sent < 400 << 20 and not select.select([connection], [], [], 0)[0]:  # 400 MiB at most
                connection.sendall(framed)
                sent += len(chunk)
        except OSError:  # the server closed the connection: it stopped reading
            pass
        connection.settimeout(60)
        try:
            reply = connection.recv(4096).decode(errors="replace")
        except ConnectionResetError:  # the kernel may reset a connection closed with unread bytes
            reply = "reset"
        connection.close()
    finally:
        server.should_exit = True
    assert sent < 100 << 20, f"{sent >> 20} MiB were read before the answer"
    assert reply == "reset" or reply.startswith("HTTP/1.1 413"), reply  # the body may come in a later segment


def test_a_failed_write_gives_the_page_a_json_message_not_a_bare_500(client, monkeypatch):
    photo = _photo(_upload(client, photo_bytes(37)).text)

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(client.catalogue.store, "decide", full)
    answer = _decide(client, photo, "unresolved", note="x")
    assert answer.status_code == 503
    message = "the catalogue could not be written or read (database or disk is full); nothing was recorded"
    assert answer.json() == {"ok": False, "message": message}
    script = (Path(__file__).parents[1] / "tfwhale/serve/static/app.js").read_text()
    assert "await response.json()" not in script  # every answer goes through readAnswer (text first)


NODE_CHECK = """
const src = require("fs").readFileSync(process.argv[1], "utf8");
const cut = (start, end) => src.slice(src.indexOf(start), src.indexOf(end, src.indexOf(start)));
const textOf = (html) => ({ body: { textContent: html.replace(/<[^>]*>/g, "") } });
global.DOMParser = class { parseFromString(html) { return textOf(html); } };
eval(cut("async function readAnswer", "// -- decisions") + cut("function plainText", "\\n}") + "}");
const reply = (status, text) => async () => ({ status, text: async () => text });
(async () => console.log(JSON.stringify([
  await readAnswer(reply(500, "Internal Server Error")),
  await readAnswer(reply(503, '<div class="error">disk full</div>')),
  await readAnswer(reply(200, '{"ok": true, "message": "done"}')),
])))();
"""


def test_the_page_reads_a_plain_text_error_as_a_message():
    """The decide and export handlers read every answer as text first (issue 23: a plain-text 500 left the
    page blank); needs node to run the page's own readAnswer."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("no node to run the page's script")
    script = Path(__file__).parents[1] / "tfwhale/serve/static/app.js"
    done = subprocess.run([node, "-e", NODE_CHECK, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {"ok": False, "message": "error 500: Internal Server Error"},
        {"ok": False, "message": "error 503: disk full"},
        {"ok": True, "message": "done"},
    ]


def test_cookies_are_named_per_port(serve_gallery, tmp_path):
    catalogue = Catalogue(serve_gallery[1], str(tmp_path / "c"))
    client = TestClient(create_app(catalogue, token="tok", hosts=HOSTS, port=8101))
    redirect = client.get("/?token=tok", follow_redirects=False)
    assert "tfwhale_token_8101=" in redirect.headers["set-cookie"]
    page = client.get("/")
    assert page.status_code == 200 and "tfwhale_csrf_8101" in client.cookies
    other = TestClient(create_app(catalogue, token="tok", hosts=HOSTS, port=8102))
    other.cookies.set("tfwhale_token_8101", "tok")  # the other port's cookie opens nothing here
    assert other.get("/").status_code == 401


# Partly holds: start errors, one line each and nothing half-made ---------------------------------------


def _serve(argv: list[str]) -> int:
    from tfwhale.serve.__main__ import main

    return main(argv)


def test_start_errors_are_one_line_and_make_nothing(serve_gallery, tmp_path, caplog, monkeypatch):
    gallery = serve_gallery[1]
    catalogue = tmp_path / "new"
    assert _serve(["--gallery", str(tmp_path / "nowhere"), "--catalogue", str(catalogue)]) == 1
    assert "--gallery:" in caplog.text and not catalogue.exists()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    caplog.clear()
    assert _serve(["--gallery", gallery, "--catalogue", str(catalogue), "--port", str(port)]) == 1
    taken.close()
    assert f"port {port} on 127.0.0.1 is already in use" in caplog.text and not catalogue.exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    caplog.clear()
    assert _serve(["--gallery", gallery, "--catalogue", str(afile), "--port", "0"]) == 1
    assert "is a file, not a folder" in caplog.text


@pytest.mark.parametrize("kind", ["newer-schema", "corrupt"])
def test_an_unusable_catalogue_database_is_one_line(serve_gallery, tmp_path, caplog, kind):
    folder = tmp_path / "cat"
    folder.mkdir()
    database = folder / "catalogue.sqlite"
    if kind == "corrupt":
        database.write_bytes(b"this is not sqlite" * 100)
    else:
        conn = sqlite3.connect(database)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (99)")
        conn.commit()
        conn.close()
    assert _serve(["--gallery", serve_gallery[1], "--catalogue", str(folder), "--port", "0"]) == 1
    expected = "its database cannot be used" if kind == "corrupt" else "is newer than this tfwhale's"
    assert expected in caplog.text and "Traceback" not in caplog.text


def test_a_read_only_catalogue_is_refused_at_start(serve_gallery, tmp_path, caplog):
    from tests.read_only import read_only_folder

    with read_only_folder(tmp_path / "cat") as folder:
        assert _serve(["--gallery", serve_gallery[1], "--catalogue", str(folder), "--port", "0"]) == 1
    assert f"--catalogue {folder}: {folder} is read-only" in caplog.text
    assert not (folder / "catalogue.sqlite").exists()


def test_a_second_server_on_one_catalogue_is_refused(tmp_path):
    held = startup.lock_catalogue(str(tmp_path / "cat"))
    with pytest.raises(startup.StartError, match=r"already served by pid \d+"):
        startup.lock_catalogue(str(tmp_path / "cat"))
    held.close()  # the first server ends: the lock goes with it
    startup.lock_catalogue(str(tmp_path / "cat")).close()
