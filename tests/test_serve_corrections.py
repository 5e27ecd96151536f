"""The catalogue's corrections, inbox and same-photo twins through its API: nothing recorded is overwritten,
an undo restores, a merge or split is what the next identification and the export answer, the inbox
survives a restart, and a photo is never its own candidate."""

from __future__ import annotations

import csv
import io
import re
import shutil
import sqlite3

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra (pip install -e .[serve])")
from fastapi.testclient import TestClient
from PIL import Image

from tests.serve_fixture import photo_bytes, second_photo
from tests.test_serve_api import HOSTS, _headers, candidates, decide, photo_of, upload
from tfwhale.serve.app import create_app
from tfwhale.serve.catalogue import Catalogue
from tfwhale.serve.engine import Engine
from tfwhale.serve.inbox import inbox as inbox_items
from tfwhale.serve.schema import MIGRATIONS, migrate
from tfwhale.serve.store import Store
from tfwhale.serve.twins import phash


@pytest.fixture(scope="module")
def template(serve_gallery, tmp_path_factory):
    """A catalogue with the records imported, and its loaded query path: each test starts from a copy
    (loading the models and reading the records took most of a test's time)."""
    folder = tmp_path_factory.mktemp("template") / "catalogue"
    catalogue = Catalogue(serve_gallery[1], str(folder))
    catalogue.store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return catalogue.engine.path, folder


@pytest.fixture
def client(serve_gallery, template, tmp_path, monkeypatch):
    path, folder = template
    shutil.copytree(folder, tmp_path / "catalogue")
    fresh_engine = classmethod(lambda cls, *args, **kwargs: cls(path))  # a new Engine on the loaded models
    monkeypatch.setattr(Engine, "load", fresh_engine)
    catalogue = Catalogue(serve_gallery[1], str(tmp_path / "catalogue"))
    client = TestClient(create_app(catalogue, reviewer="tester", hosts=HOSTS))
    client.get("/")
    client.catalogue = catalogue
    return client


def post(client, url: str, body: dict):
    return client.post(url, json=body, headers=_headers(client))


def known_labels(html: str) -> list[str]:
    return [label for label in candidates(html) if label != "new_individual"]


def decisions_csv(client) -> list[dict]:
    return list(csv.DictReader(io.StringIO(client.get("/export/decisions.csv").text)))


def exported(client, tmp_path) -> dict[str, str]:
    """Image name -> individual id of an export's train.csv (images keep their original names)."""
    answer = post(client, "/api/export", {}).json()
    rows = csv.DictReader(io.StringIO((tmp_path / answer["folder"] / "train.csv").read_text()))
    return {row["image"]: row["individual_id"] for row in rows}


def test_reassign_and_undo_keep_every_version_and_the_gallery_follows(client, tmp_path):
    catalogue = client.catalogue
    photo = photo_of(upload(client, photo_bytes(41), "ann.jpg").text)
    assert decide(client, photo, "register", "Ann-1").json()["ok"]
    other = photo_of(upload(client, photo_bytes(42)).text)
    assert decide(client, other, "register", "Ben-1").json()["ok"]
    assert decide(client, photo, "confirm", "Ben-1").status_code == 409  # assigned: reassign, not confirm
    answer = decide(client, photo, "reassign", "Ben-1").json()
    assert answer["ok"] and answer["message"] == "reassigned to Ben-1; the gallery answers with it now"
    assert catalogue.store.photo(photo).individual_id == "Ben-1"
    assert candidates(upload(client, second_photo(photo_bytes(41))).text)[0] == "Ben-1"
    rows = catalogue.store.decisions(photo=photo)
    assert [(r["action"], r["individual_id"], r["from_individual"]) for r in rows] == [
        ("register", "Ann-1", ""), ("reassign", "Ben-1", "Ann-1")
    ]  # fmt: skip
    assert post(client, "/api/undo", {"decision": rows[1]["id"]}).json()["ok"]
    assert catalogue.store.photo(photo).individual_id == "Ann-1"  # undoing the reassign restores Ann-1
    assert candidates(upload(client, second_photo(photo_bytes(41)), "again.jpg").text)[0] == "Ann-1"
    assert post(client, "/api/undo", {"decision": rows[1]["id"]}).status_code == 409  # once only
    ben = client.get("/individuals/Ben-1").text  # its register, the reassign struck through, the undo
    assert ben.count('class="undone"') == 1 and "takes back #" in ben
    assert post(client, "/api/undo", {"decision": rows[0]["id"]}).json()["ok"]  # the register itself
    assert catalogue.store.photo(photo).individual_id is None
    assert "Ann-1" not in catalogue.store.individual_ids()  # it held no other photo
    assert photo in [item.photo for item in inbox_items(catalogue.store)]  # back in the inbox
    history = [r for r in decisions_csv(client) if r["photo_sha256"] == photo]
    assert [(r["action"], r["individual_id"], r["from_individual"], r["reverts"]) for r in history] == [
        ("register", "Ann-1", "", ""),
        ("reassign", "Ben-1", "Ann-1", ""),
        ("undo", "Ben-1", "Ann-1", str(rows[1]["id"])),
        ("undo", "Ann-1", "", str(rows[0]["id"])),
    ]
    assert {r["photo_now_in"] for r in history} == {""} and history[0]["photo_name"] == "ann.jpg"
    assert "ann.jpg" not in exported(client, tmp_path)  # undecided: not in train.csv
    page = client.get(f"/photos/{photo}").text
    assert 'class="register"' in page and "disabled" not in page  # undecided again: every button back


def test_merge_answers_with_the_kept_id_in_identify_and_export_and_undo_restores(client, tmp_path):
    catalogue = client.catalogue
    photo = photo_of(upload(client, photo_bytes(43)).text)
    assert decide(client, photo, "register", "Moby-1").json()["ok"]
    again = upload(client, second_photo(photo_bytes(43)))
    assert candidates(again.text)[0] == "Moby-1"
    kept = known_labels(again.text)[1]  # an individual from the records
    gallery_photos = [p.sha256 for p in catalogue.store.photos_of(kept)]
    answer = post(client, "/api/merge", {"merged": "Moby-1", "kept": kept, "note": "same notch"}).json()
    assert answer["ok"], answer
    after = upload(client, second_photo(photo_bytes(43)), "after.jpg").text
    assert candidates(after)[0] == kept and "Moby-1" not in candidates(after)
    assert exported(client, tmp_path)["photo.jpg"] == kept  # train.csv carries the kept id
    assert (
        decide(client, photo_of(upload(client, photo_bytes(44)).text), "confirm", "Moby-1").status_code == 409
    )
    assert post(client, "/api/merge", {"merged": kept, "kept": "Moby-1"}).status_code == 409  # no cycles
    # merging a records individual into another: its gallery rows (predict's matrix) answer as the kept id
    gallery_answer = upload(client, second_photo(catalogue.blobs.get(gallery_photos[0])), "g.jpg").text
    assert candidates(gallery_answer)[0] == kept
    merge_id = next(r for r in catalogue.store.decisions() if r["action"] == "merge")["id"]
    assert post(client, "/api/undo", {"decision": merge_id}).json()["ok"]
    assert catalogue.store.photo(photo).individual_id == "Moby-1"
    assert candidates(upload(client, second_photo(photo_bytes(43)), "undone.jpg").text)[0] == "Moby-1"
    assert {p.sha256 for p in catalogue.store.photos_of(kept)} == set(gallery_photos)


def test_merging_records_individuals_relabels_predicts_rows(client):
    catalogue = client.catalogue
    ids = sorted(catalogue.store.individual_ids())
    merged, kept = ids[0], ids[1]
    crop = catalogue.store.photos_of(merged)[0].crop_sha256
    query = second_photo(catalogue.blobs.get(crop))
    assert candidates(upload(client, query, "q1.jpg").text)[0] == merged
    assert post(client, "/api/merge", {"merged": merged, "kept": kept}).json()["ok"]
    labels = candidates(upload(client, query, "q2.jpg").text)
    assert labels[0] == kept and merged not in labels and len(labels) == 5
    assert catalogue.store.photos_of(merged) == []
    assert "Merged into" in client.get(f"/individuals/{merged}").text
    assert "merged into" in client.get("/individuals", params={"q": merged}).text


def test_a_gallery_photo_is_reassigned_from_its_page_and_its_row_follows(client):
    catalogue = client.catalogue
    individual, other = sorted(catalogue.store.individual_ids())[3:5]
    photo = catalogue.store.photos_of(individual)[0]
    page = client.get(f"/photos/{photo.sha256}").text
    assert "Reassign to any individual" in page and 'class="assign-search"' in page
    assert decide(client, photo.sha256, "reassign", other).json()["ok"]
    assert catalogue.store.photo(photo.sha256).individual_id == other
    query = second_photo(catalogue.blobs.get(photo.crop_sha256))
    top = upload(client, query, "moved.jpg").text
    assert candidates(top)[0] == other  # predict's row of that photo answers with its new id


def test_split_moves_the_chosen_photos_and_undo_puts_them_back(client, tmp_path):
    catalogue = client.catalogue
    individual = sorted(catalogue.store.individual_ids())[2]
    photos = [p.sha256 for p in catalogue.store.photos_of(individual)]
    assert len(photos) >= 2
    moved = photos[:1]
    answer = post(
        client, "/api/split", {"individual": individual, "photos": moved, "other": "Split-1"}
    ).json()
    assert answer["ok"], answer
    assert [p.sha256 for p in catalogue.store.photos_of("Split-1")] == moved
    assert (
        catalogue.store.individual("Split-1")["species"] == catalogue.store.individual(individual)["species"]
    )
    query = second_photo(catalogue.blobs.get(catalogue.store.photo(moved[0]).crop_sha256))
    assert candidates(upload(client, query, "s1.jpg").text)[0] == "Split-1"
    train = exported(client, tmp_path)
    moved_name = catalogue.store.photo(moved[0]).name
    assert train[moved_name] == "Split-1" and list(train.values()).count("Split-1") == 1
    refused = post(client, "/api/split", {"individual": individual, "photos": moved, "other": "Split-2"})
    assert refused.status_code == 409 and "not a photo of" in refused.json()["message"]
    split_row = next(r for r in catalogue.store.decisions() if r["action"] == "split")
    assert post(client, "/api/undo", {"decision": split_row["id"]}).json()["ok"]
    assert {p.sha256 for p in catalogue.store.photos_of(individual)} == set(photos)
    assert "Split-1" not in catalogue.store.individual_ids()
    assert candidates(upload(client, query, "s2.jpg").text)[0] == individual


def test_inbox_keeps_uploads_and_their_answers_across_a_restart(client, serve_gallery, tmp_path):
    first = upload(client, photo_bytes(45), "first.jpg").text
    pending, left = photo_of(first), photo_of(upload(client, photo_bytes(46), "second.jpg").text)
    decided = photo_of(upload(client, photo_bytes(47), "third.jpg").text)
    assert decide(client, decided, "register", "Inbox-1").json()["ok"]
    assert decide(client, left, "unresolved", note="tail only, blurred").json()["ok"]
    restarted = Catalogue(serve_gallery[1], str(tmp_path / "catalogue"))

    def no_model(*args, **kwargs):
        raise AssertionError("the inbox reopened an answer by running the model")

    restarted.engine.embed = no_model
    client2 = TestClient(create_app(restarted, hosts=HOSTS))
    assert "1 earlier upload(s) wait for a decision" in client2.get("/").text
    inbox = client2.get("/inbox").text
    assert "first.jpg" in inbox and "second.jpg" not in inbox and "third.jpg" not in inbox
    unresolved = client2.get("/inbox?tab=unresolved").text
    assert "second.jpg" in unresolved and "tail only, blurred" in unresolved
    page = client2.get(f"/photos/{pending}").text
    assert "The answer given at upload" in page
    assert candidates(page) == candidates(first)  # as stored, in the same order
    assert re.findall(r"similarity [0-9.]+", page) == re.findall(r"similarity [0-9.]+", first)
    fresh = client2.get(f"/photos/{pending}?fresh=1").text
    assert "The answer given at upload" not in fresh and len(candidates(fresh)) == 5


def _reencoded(data: bytes, scale: float, quality: int) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = image.resize((int(image.width * scale), int(image.height * scale)), Image.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def test_phash_survives_reencoding_and_resizing_and_tells_photos_apart():
    data = photo_bytes(48, size=224)
    value = phash(data)
    for scale, quality in [(1.0, 70), (2.0, 95), (0.5, 85)]:
        assert bin(value ^ phash(_reencoded(data, scale, quality))).count("1") <= 2
    others = [bin(value ^ phash(photo_bytes(seed, size=224))).count("1") for seed in range(49, 59)]
    assert min(others) > 10, others
    assert bin(value ^ phash(second_photo(data))).count("1") > 10  # mirrored: another photo
    with pytest.raises(ValueError, match="perceptual hash"):
        phash(b"not an image")


def test_an_upload_of_a_test_photo_is_one_photo_with_it(client):
    catalogue = client.catalogue
    queue = catalogue.review_queue()
    test = catalogue.store.photo(queue[0].photo)
    twin_bytes = _reencoded(catalogue.blobs.get(test.crop_sha256), 2.0, 80)
    html = upload(client, twin_bytes, "field-shot.jpg").text
    upload_sha = photo_of(html)
    assert upload_sha != test.sha256 and "The same photo as" in html and test.name in html
    label = known_labels(html)[0]
    assert decide(client, upload_sha, "confirm", label).json()["ok"]
    assert test.sha256 not in {item.photo for item in catalogue.review_queue()}  # its twin was decided
    result = catalogue.result_for(test.sha256)
    shown = [sha for c in result.candidates for sha, _ in c.photos]
    assert upload_sha not in shown and test.sha256 not in shown
    assert all(c.similarity is None or c.similarity < 0.999 for c in result.candidates)
    again = upload(client, _reencoded(twin_bytes, 0.5, 90), "again.jpg").text  # a third copy of it
    assert "The same photo as" in again
    assert all(s < 0.999 for s in map(float, re.findall(r"similarity ([0-9.]+)", again))), "it found itself"


def test_assign_to_any_individual_by_search_and_the_proposed_id_moves_on(client):
    catalogue = client.catalogue
    html = upload(client, photo_bytes(60)).text
    shown = set(candidates(html))
    outside = sorted(catalogue.store.individual_ids() - shown)[0]
    found = client.get("/api/individuals", params={"q": outside}).json()["individuals"]
    assert found[0]["id"] == outside and found[0]["photos"]  # with thumbnails
    assert client.get(f"/blob/{found[0]['photos'][0]}.jpg").status_code == 200
    assert decide(client, photo_of(html), "confirm", outside).json()["ok"]
    proposed = re.search(r'data-proposed="([^"]+)"', html).group(1)
    answer = decide(client, photo_of(upload(client, photo_bytes(61)).text), "register", proposed).json()
    assert answer["ok"] and answer["proposed"] != proposed
    assert answer["proposed"] not in catalogue.store.individual_ids()
    assert "(1)" not in html and "(n)" not in html and "(u)" not in html  # no keys on the identify page
    review = client.get("/review").text
    assert re.search(r"Confirm \([1-5]\)", review) and "(n)" in review


def test_a_version_1_catalogue_is_migrated_with_its_decisions_kept(tmp_path):
    conn = sqlite3.connect(tmp_path / "catalogue.sqlite", isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO individuals VALUES ('G-1', 'orca', 'gallery', 't', '')")
    conn.execute(
        "INSERT INTO photos (sha256, source, name, crop_sha256, individual_id, added_at) "
        "VALUES ('a', 'gallery', 'g.jpg', 'a', 'G-1', 't'), ('b', 'upload', 'u.jpg', 'b', 'G-1', 't')"
    )
    conn.execute(
        "INSERT INTO decisions (photo_sha256, action, individual_id, decided_at) "
        "VALUES ('b', 'confirm', 'G-1', 't')"
    )
    conn.close()
    store = Store(tmp_path)
    assert [r["action"] for r in store.decisions()] == ["confirm"]
    assert (
        store.conn.execute("SELECT record_individual FROM photos WHERE sha256 = 'a'").fetchone()[0] == "G-1"
    )
    store.add_individual(store.conn, "G-2", "orca", "registered", "r")
    store.decide("b", "reassign", "G-2", "", "r", [], np.zeros(4, np.float32))
    assert store.photo("b").individual_id == "G-2" and store.photo("a").individual_id == "G-1"
    assert migrate(store.conn, store.path) == len(MIGRATIONS)
