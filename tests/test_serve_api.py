"""The catalogue app through its HTTP API (Starlette's test client): identify, decide, grow, guards."""

from __future__ import annotations

import re
import threading

import pytest

pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra (pip install -e .[serve])")
from fastapi.testclient import TestClient

from tests.serve_fixture import photo_bytes, second_photo
from tfwhale.serve.app import create_app
from tfwhale.serve.catalogue import Catalogue
from tfwhale.serve.security import CSRF_COOKIE, MAX_UPLOAD_BYTES, allowed_host_names

ORIGIN = "http://testserver"
HOSTS = allowed_host_names("127.0.0.1", ["testserver"])  # the test client's Host


@pytest.fixture
def client(serve_gallery, tmp_path):
    _, out = serve_gallery
    catalogue = Catalogue(out, str(tmp_path / "catalogue"))
    client = TestClient(create_app(catalogue, reviewer="tester", hosts=HOSTS))
    client.get("/")  # sets the CSRF cookie
    client.catalogue = catalogue
    return client


def _headers(client) -> dict[str, str]:
    return {"X-CSRF-Token": client.cookies[CSRF_COOKIE], "Origin": ORIGIN}


def upload(client, data: bytes, name: str = "photo.jpg", box: str = ""):
    files = {"photo": (name, data, "image/jpeg")}
    return client.post("/api/identify", files=files, data={"box": box}, headers=_headers(client))


def decide(client, photo: str, action: str, individual: str = "", note: str = ""):
    body = {"photo": photo, "action": action, "individual": individual, "note": note, "scores": []}
    return client.post("/api/decide", json=body, headers=_headers(client))


def candidates(html: str) -> list[str]:
    return re.findall(r'class="candidate" data-label="([^"]+)"', html)


def photo_of(html: str) -> str:
    return re.search(r'data-photo="([0-9a-f]{64})"', html).group(1)


def test_upload_shows_five_candidates_and_confirm_grows_the_gallery(client):
    response = upload(client, photo_bytes(1))
    assert response.status_code == 200, response.text
    labels = candidates(response.text)
    assert len(labels) == 5 and len(set(labels)) == 5
    assert "new_individual" in labels
    known = next(label for label in labels if label != "new_individual")
    size = client.catalogue.engine.size
    photo = photo_of(response.text)
    assert decide(client, photo, "confirm", known).json()["ok"]
    assert client.catalogue.engine.size == size + 1
    assert client.catalogue.store.photo(photo).individual_id == known
    again = upload(client, second_photo(photo_bytes(1)))
    assert candidates(again.text)[0] == known  # the grown gallery finds it at once
    page = client.get(f"/individuals/{known}")
    assert photo[:12] in page.text and "confirm" in page.text


def test_register_new_individual_comes_back_top_and_survives_a_restart(client, serve_gallery, tmp_path):
    response = upload(client, photo_bytes(2))
    photo = photo_of(response.text)
    proposed = re.search(r'data-proposed="([^"]+)"', response.text).group(1)
    assert proposed not in client.catalogue.store.individual_ids()
    answer = decide(client, photo, "register", "Moby-1", note="scar on the left fluke")
    assert answer.status_code == 200 and answer.json()["ok"]
    assert candidates(upload(client, second_photo(photo_bytes(2))).text)[0] == "Moby-1"
    # the registration is in the database: a new app on the same catalogue still finds it
    restarted = Catalogue(serve_gallery[1], str(tmp_path / "catalogue"))
    client2 = TestClient(create_app(restarted, hosts=HOSTS))
    client2.get("/")
    assert candidates(upload(client2, second_photo(photo_bytes(2)), "b.jpg").text)[0] == "Moby-1"
    assert "scar on the left fluke" in client2.get("/individuals/Moby-1").text
    # registering an existing id, or the same photo again, is refused
    assert decide(client2, photo, "register", "Moby-2").status_code == 409
    other = photo_of(upload(client2, photo_bytes(3)).text)
    assert decide(client2, other, "register", "Moby-1").status_code == 409


def test_unresolved_with_note_and_decisions_csv_and_export(client, tmp_path):
    photo = photo_of(upload(client, photo_bytes(4)).text)
    assert decide(client, photo, "unresolved", note="=cmd|' /C calc'!A0").json()["ok"]
    assert client.catalogue.store.photo(photo).individual_id is None
    csv_text = client.get("/export/decisions.csv").text
    assert "unresolved" in csv_text and "'=cmd" in csv_text  # no spreadsheet formula
    decide(client, photo, "register", "Nova")
    answer = client.post("/api/export", json={}, headers=_headers(client)).json()
    train = (tmp_path / answer["folder"] / "train.csv").read_text().splitlines()
    assert train[0] == "image,species,individual_id,date,latitude,longitude,place,side,photographer,notes"
    assert "photo.jpg,unknown,Nova,,,,,unknown,," in train  # the upload's own name, its metadata columns
    assert len(train) - 1 == len(list((tmp_path / answer["folder"] / "train_images").iterdir()))


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"this is not an image at all", 400, "not an image format"),
        (photo_bytes(5)[:600], 400, "cannot decode image"),
        (b"\xff\xd8" + b"0" * (MAX_UPLOAD_BYTES + 10), 413, "too large"),
    ],
    ids=["not-image", "truncated", "too-large"],
)
def test_bad_uploads_get_a_clear_message_and_store_nothing(client, data, status, words):
    before = client.catalogue.store.conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
    response = upload(client, data, "bad.jpg")
    assert response.status_code == status
    assert words in response.text
    assert client.catalogue.store.conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0] == before
    assert upload(client, photo_bytes(6)).status_code == 200  # the app goes on


def test_state_changes_need_the_csrf_token_and_same_origin(client):
    files = {"photo": ("p.jpg", photo_bytes(7), "image/jpeg")}
    assert client.post("/api/identify", files=files, headers={"Origin": ORIGIN}).status_code == 403
    bad_origin = {"X-CSRF-Token": client.cookies[CSRF_COOKIE], "Origin": "http://evil.example"}
    assert client.post("/api/identify", files=files, headers=bad_origin).status_code == 403
    wrong = {"X-CSRF-Token": "guess", "Origin": ORIGIN}
    assert client.post("/api/decide", json={}, headers=wrong).status_code == 403


def test_access_token_is_checked_on_every_request(serve_gallery, tmp_path):
    catalogue = Catalogue(serve_gallery[1], str(tmp_path / "c"))
    client = TestClient(create_app(catalogue, token="s3cret", hosts=HOSTS))
    assert client.get("/").status_code == 401
    assert client.get("/individuals?token=wrong").status_code == 401
    assert client.get("/static/app.js").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    response = client.get("/?token=s3cret", follow_redirects=False)
    assert response.status_code == 303 and "token" not in response.headers["location"]
    assert client.get("/individuals").status_code == 200  # the cookie now carries it


def test_user_text_is_escaped_everywhere(client):
    photo = photo_of(upload(client, photo_bytes(8), name="<script>alert(1)</script>.jpg").text)
    decide(client, photo, "register", "Esc-1", note="<img src=x onerror=alert(2)>")
    page = client.get("/individuals/Esc-1").text
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "<script>alert(1)" not in client.get(f"/photos/{photo}").text
    assert (
        decide(client, photo_of(upload(client, photo_bytes(9)).text), "register", "<b>x</b>").status_code
        == 400
    )


def test_two_reviewers_cannot_register_one_photo_twice(client):
    photo = photo_of(upload(client, photo_bytes(10)).text)
    statuses = []

    def register(name: str) -> None:
        statuses.append(decide(client, photo, "register", name).status_code)

    threads = [threading.Thread(target=register, args=(f"Twin-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 409, 409, 409]
    assert (
        client.catalogue.store.conn.execute(
            "SELECT COUNT(*) FROM decisions WHERE photo_sha256 = ?", (photo,)
        ).fetchone()[0]
        == 1
    )
    assert client.catalogue.engine._photos.count(photo) == 1  # added to the gallery once


def test_review_queue_lists_test_photos_most_uncertain_first(client):
    page = client.get("/review")
    assert page.status_code == 200
    queue = client.catalogue.review_queue()
    assert queue and len(candidates(page.text)) == 5
    margins = [abs(item.margin) for item in queue]
    assert margins == sorted(margins)
    first = queue[0]
    label = next(c for c in candidates(page.text) if c != "new_individual")
    assert decide(client, first.photo, "confirm", label).json()["ok"]
    assert first.photo not in {item.photo for item in client.catalogue.review_queue()}


def test_cli_refuses_a_folder_without_a_gallery_and_needs_a_token_off_loopback(tmp_path, caplog):
    from tfwhale.serve.__main__ import main
    from tfwhale.serve.security import access_token

    assert main(["--gallery", str(tmp_path), "--catalogue", str(tmp_path / "c")]) == 1
    assert "no finished predict output here" in caplog.text
    assert access_token("127.0.0.1", None) is None and access_token("::1", None) is None
    assert access_token("localhost", "given") == "given"
    generated = access_token("0.0.0.0", None)
    assert generated and len(generated) >= 24 and generated != access_token("0.0.0.0", None)
