"""Catalogue metadata, bulk import and export of originals (serve): store, engine and HTTP API."""

from __future__ import annotations

import csv
import io
import shlex
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra (pip install -e .[serve])")
from fastapi.testclient import TestClient
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from tests.serve_fixture import photo_bytes, second_photo
from tfwhale.serve import bulk_import, export, metadata_store
from tfwhale.serve.app import create_app
from tfwhale.serve.candidates import best_photos
from tfwhale.serve.catalogue import Catalogue
from tfwhale.serve.metadata import MetaError, PhotoMeta, check_meta, read_exif
from tfwhale.serve.security import CSRF_COOKIE, allowed_host_names

HOSTS = allowed_host_names("127.0.0.1", ["testserver"])


def exif_photo(seed: int, taken: str = "2024:05:17 08:30:00") -> bytes:
    """A JPEG whose EXIF says when (DateTimeOriginal) and where (33°55'30"S 18°25'12"E)."""
    image = Image.open(io.BytesIO(photo_bytes(seed)))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = taken
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "S", (IFDRational(33), IFDRational(55), IFDRational(30))
    gps[3], gps[4] = "E", (IFDRational(18), IFDRational(25), IFDRational(12))
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


@pytest.fixture(scope="module")
def catalogue(serve_gallery, tmp_path_factory):
    return Catalogue(serve_gallery[1], str(tmp_path_factory.mktemp("meta") / "catalogue"))


@pytest.fixture(scope="module")
def client(catalogue):
    client = TestClient(create_app(catalogue, reviewer="tester", hosts=HOSTS))
    client.get("/")
    return client


def _headers(client) -> dict[str, str]:
    return {"X-CSRF-Token": client.cookies[CSRF_COOKIE], "Origin": "http://testserver"}


def test_exif_date_and_gps_are_read_and_typed_values_win():
    meta = read_exif(exif_photo(1))
    # 33 + 55/60 + 30/3600 = 33.925 south; 18 + 25/60 + 12/3600 = 18.42 east
    assert meta == PhotoMeta(date="2024-05-17T08:30:00", latitude=-33.925, longitude=18.42)
    assert read_exif(photo_bytes(1)) == PhotoMeta()  # no EXIF: nothing invented
    assert read_exif(b"not a photo") == PhotoMeta()
    typed = check_meta({"side": "Left", "date": "2023-01-02"}).filled_from(meta)
    assert (typed.side, typed.date, typed.latitude) == ("left", "2023-01-02", -33.925)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [("side", "up", "side"), ("date", "17/05/2024", "date"), ("latitude", "91", "latitude"),
     ("notes", "a\tb", "notes"), ("colour", "grey", "unknown metadata field")],
)  # fmt: skip
def test_bad_metadata_is_refused_naming_the_field(field, value, says):
    with pytest.raises(MetaError, match=says):
        check_meta({field: value}, "row 3")


def test_upload_keeps_exif_and_form_metadata_and_edits_keep_every_version(client, catalogue):
    files = {"photo": ("fluke.jpg", exif_photo(2), "image/jpeg")}
    form = {"side": "right", "photographer": "Ann"}
    response = client.post("/api/identify", files=files, data=form, headers=_headers(client))
    assert response.status_code == 200, response.text
    sha = catalogue.store.conn.execute("SELECT sha256 FROM photos WHERE name = 'fluke.jpg'").fetchone()[0]
    meta = metadata_store.metadata(catalogue.store, sha)
    assert (meta.side, meta.photographer) == ("right", "Ann")  # typed at upload
    assert (meta.date, meta.latitude) == ("2024-05-17T08:30:00", -33.925)  # from EXIF
    edit = {"date": "2024-05-18", "side": "left", "place": "False Bay", "notes": "notch", "reviewer": "Bo"}
    answer = client.post(f"/api/photos/{sha}/metadata", json=edit, headers=_headers(client))
    assert answer.status_code == 200 and answer.json()["ok"], answer.text
    history = metadata_store.history(catalogue.store, sha)
    assert [h["how"] for h in history] == ["upload", "edit"]
    assert history[0]["fields"]["side"] == "right" and history[1]["fields"]["side"] == "left"
    assert history[1]["changed_by"] == "Bo"
    page = client.get(f"/photos/{sha}").text
    assert "False Bay" in page and "2 metadata version(s)" in page
    bad = client.post(f"/api/photos/{sha}/metadata", json={"side": "up"}, headers=_headers(client))
    assert bad.status_code == 400 and "side" in bad.json()["message"]
    missing = client.post(f"/api/photos/{'0' * 64}/metadata", json={"side": "left"}, headers=_headers(client))
    assert missing.status_code == 404
    refused = client.post("/api/identify", files=files, data={"side": "top"}, headers=_headers(client))
    assert refused.status_code == 400 and "side" in refused.text


def test_filters_narrow_the_review_queue_and_the_individuals_list(client, catalogue):
    queue = catalogue.review_queue()
    assert len(queue) >= 3
    first, second = queue[0].photo, queue[1].photo
    catalogue.set_metadata(
        first, check_meta({"side": "left", "date": "2024-03-01", "place": "Kalk Bay"}), "t"
    )
    catalogue.set_metadata(
        second, check_meta({"side": "right", "date": "2024-04-01", "photographer": "Zoe"}), "t"
    )

    def passing(**query) -> set[str]:
        return {i.photo for i in catalogue.review_queue(metadata_store.MetaFilter.from_query(**query))}

    assert passing(side="left") == {first}
    assert passing(date_from="2024-03-15") == {second}
    assert passing(date_from="2024-03-01", date_to="2024-03-01") == {first}  # the whole day counts
    assert passing(place="kalk") == {first} and passing(photographer="zo") == {second}
    assert passing(side="front") == set()
    page = client.get("/review", params={"side": "right"}).text
    assert catalogue.store.photo(second).name in page and catalogue.store.photo(first).name not in page
    assert client.get("/review", params={"date_from": "yesterday"}).status_code == 400
    # individuals: only those with a photo passing the filter
    assigned = catalogue.store.conn.execute(
        "SELECT sha256, individual_id FROM photos WHERE individual_id IS NOT NULL LIMIT 1"
    ).fetchone()
    catalogue.set_metadata(assigned[0], check_meta({"side": "back", "photographer": "Quinn"}), "t")
    listing = client.get("/individuals", params={"side": "back"}).text
    assert f">{assigned[1]}</a>" in listing and listing.count("/individuals/") == 1


def test_same_side_photos_are_shown_first(catalogue):
    engine = catalogue.engine
    label = engine._ids[0]
    members = np.asarray(engine._rows[label])
    sims = np.linspace(0.9, 0.1, len(members)).astype(np.float32)  # the first photo scores best
    photos = [engine._photos[row] for row in members]
    assert len(members) >= 2 and all(photos)

    def best(side):
        return best_photos(members, sims, engine._photos, engine._same_side(engine._snapshot(), side))[0][0]

    engine.set_sides({photos[-1]: "left"})
    assert best("") == photos[0]  # side unknown: by similarity
    assert best("left") == photos[-1]  # same side first
    assert best("right") == photos[0]
    engine.set_sides({photos[-1]: "unknown"})
    assert best("left") == photos[0]


def test_folder_import_reports_each_photo_and_one_broken_photo_sinks_nothing(catalogue, tmp_path):
    existing = sorted(catalogue.store.individual_ids())[0]
    (tmp_path / "Orca-7").mkdir()
    (tmp_path / existing).mkdir()
    (tmp_path / "Orca-7" / "a.jpg").write_bytes(exif_photo(40))
    (tmp_path / "Orca-7" / "b.jpg").write_bytes(second_photo(photo_bytes(40)))
    (tmp_path / "Orca-7" / "broken.jpg").write_bytes(photo_bytes(41)[:300])
    (tmp_path / existing / "c.jpg").write_bytes(photo_bytes(42))
    (tmp_path / existing / "again.jpg").write_bytes(photo_bytes(42))  # the same bytes twice
    (tmp_path / "loose.jpg").write_bytes(photo_bytes(43))
    (tmp_path / "Orca-7" / "notes.txt").write_text("not a photo")
    outcomes = bulk_import.run_import(catalogue, bulk_import.plan_folder(tmp_path), "importer")
    status = {o.file: o.status for o in outcomes}
    assert status == {"loose.jpg": "refused", "Orca-7/a.jpg": "imported", "Orca-7/b.jpg": "imported",
                      "Orca-7/broken.jpg": "unreadable", f"{existing}/again.jpg": "imported",
                      f"{existing}/c.jpg": "duplicate"}  # fmt: skip
    reasons = {o.file: o.reason for o in outcomes}
    assert "truncated" in reasons["Orca-7/broken.jpg"] or "broken" in reasons["Orca-7/broken.jpg"]
    assert f"as {existing}" in reasons[f"{existing}/c.jpg"]
    orca = catalogue.store.photos_of("Orca-7")
    assert {p.name for p in orca} == {"a.jpg", "b.jpg"}
    actions = [d["action"] for d in catalogue.store.decisions(individual="Orca-7")]
    assert actions == ["register", "confirm"]
    a = next(p for p in orca if p.name == "a.jpg")
    assert metadata_store.metadata(catalogue.store, a.sha256).date == "2024-05-17T08:30:00"  # EXIF
    again = catalogue.engine.identify_bytes(second_photo(exif_photo(40)), None, "q.jpg")[1]
    assert again.candidates[0].label == "Orca-7"  # imported photos answer the next query
    report = list(csv.reader(io.StringIO(bulk_import.report_csv(outcomes))))
    assert report[0] == list(bulk_import.REPORT_COLUMNS) and len(report) == 7


def test_csv_import_takes_metadata_and_refuses_bad_rows(catalogue, tmp_path):
    (tmp_path / "p1.jpg").write_bytes(photo_bytes(50))
    (tmp_path / "p2.jpg").write_bytes(photo_bytes(51))
    (tmp_path / "list.csv").write_text(
        "image,individual_id,species,side,date,place,photographer,comment\n"
        "p1.jpg,Dolly-1,bottlenose_dolphin,left,2022-07-01,Plett,Cy,ignored\n"
        "p2.jpg,Dolly-2,,sideways,,,,\n"
        "gone.jpg,Dolly-3,,,,,,\n"
    )
    plan = bulk_import.plan_folder(tmp_path, tmp_path / "list.csv")
    outcomes = {o.file: o for o in bulk_import.run_import(catalogue, plan, "importer")}
    assert outcomes["p1.jpg"].status == "imported"
    assert outcomes["p2.jpg"].status == "refused" and "row 3" in outcomes["p2.jpg"].reason
    assert outcomes["gone.jpg"].status == "unreadable" and "no such file" in outcomes["gone.jpg"].reason
    (photo,) = catalogue.store.photos_of("Dolly-1")
    meta = metadata_store.metadata(catalogue.store, photo.sha256)
    assert (meta.side, meta.date, meta.place, meta.photographer) == ("left", "2022-07-01", "Plett", "Cy")
    assert catalogue.store.individual("Dolly-1")["species"] == "bottlenose_dolphin"
    with pytest.raises(bulk_import.ImportInputError, match="individual_id"):
        (tmp_path / "bad.csv").write_text("image,id\np1.jpg,x\n")
        bulk_import.plan_folder(tmp_path, tmp_path / "bad.csv")


def test_export_keeps_original_names_bytes_and_metadata_columns(catalogue, serve_gallery, tmp_path):
    original = exif_photo(60)
    clash = photo_bytes(61)
    for data in (original, clash):  # two uploads named alike
        sha, result = catalogue.upload(data, "IMG_0001.JPG", None, "t", PhotoMeta(side="front"))
        catalogue.decide(sha, "register", f"Twin-{data[-4:].hex()}", "", "t", result.scores())
    done = export.export_with_report(catalogue, tmp_path / "export")
    rows = list(csv.DictReader((done.folder / "train.csv").open()))
    assert list(rows[0]) == list(export.TRAIN_COLUMNS)
    named = [row for row in rows if row["image"].startswith("IMG_0001")]
    assert "IMG_0001.JPG" in {row["image"] for row in named}
    assert len({row["image"] for row in named}) == 2 and all(row["side"] == "front" for row in named)
    first = next(row for row in named if row["image"] == "IMG_0001.JPG")
    assert (done.folder / "train_images" / first["image"]).read_bytes() in (original, clash)  # as uploaded
    assert any(row["date"] == "2024-05-17T08:30:00" and row["latitude"] == "-33.925000" for row in rows)
    # the records' photos: originals from the build's image folder, under their own names
    from pathlib import Path

    originals = Path(serve_gallery[0]) / "train_images"
    gallery = [row for row in rows if (originals / row["image"]).exists()]
    assert len(gallery) >= 12  # the records' photos, under the names the build read them by
    for row in gallery[:5]:
        exported = (done.folder / "train_images" / row["image"]).read_bytes()
        assert exported == (originals / row["image"]).read_bytes()  # the original, not the crop
    from tfrecords_builder.tables import read_boxes_csv

    boxed = {name for name, box in read_boxes_csv(f"{serve_gallery[0]}/boxes.csv").items() if box}
    boxes = {row["image"] for row in csv.DictReader((done.folder / "boxes.csv").open())}
    assert {row["image"] for row in gallery} & boxed <= boxes  # with the boxes the build cropped them by
    assert {row["image"] for row in gallery} & boxed
    readme = (done.folder / export.README_NAME).read_text()
    assert "original files" in readme and "side:" in readme


def test_export_names_are_readable_unique_and_safe():
    taken: set[str] = set()
    sha = "ab" * 32
    assert export.export_name("dir/IMG 1.jpg", sha, taken) == "IMG 1.jpg"
    assert export.export_name("other/img 1.JPG", sha, taken) == f"img 1-{sha[:8]}.JPG"  # clash, any case
    assert export.export_name("..\\C:evil.png", sha, taken) == "C_evil.png"
    assert export.export_name("notes", sha, taken) == "notes.jpg"
    assert export.export_name("", sha, taken) == f"{sha[:12]}.jpg"


def test_import_subcommand_imports_a_folder_and_writes_its_report(serve_gallery, tmp_path, capsys):
    from tfwhale.serve.__main__ import main

    photos = tmp_path / "photos"
    (photos / "Kelp-1").mkdir(parents=True)
    (photos / "Kelp-1" / "k1.jpg").write_bytes(photo_bytes(80))
    (photos / "Kelp-1" / "k2.png").write_bytes(photo_bytes(81, fmt="PNG"))
    (photos / "Kelp-1" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    report = tmp_path / "report.csv"
    argv = ["import", str(photos), "--gallery", serve_gallery[1], "--catalogue", str(tmp_path / "cat"),
            "--reviewer", "cli", "--report", str(report)]  # fmt: skip
    assert main(argv) == 1  # one photo was not imported: scripts can tell
    out = capsys.readouterr().out
    assert "Kelp-1/bad.jpg: unreadable" in out and "2 imported" in out
    rows = list(csv.DictReader(report.open()))
    assert {(r["file"], r["status"]) for r in rows} == {
        ("Kelp-1/bad.jpg", "unreadable"), ("Kelp-1/k1.jpg", "imported"), ("Kelp-1/k2.png", "imported")
    }  # fmt: skip
    again = Catalogue(serve_gallery[1], str(tmp_path / "cat"))
    assert {p.name for p in again.store.photos_of("Kelp-1")} == {"k1.jpg", "k2.png"}
    assert main(["import", str(tmp_path / "nowhere"), "--gallery", serve_gallery[1],
                 "--catalogue", str(tmp_path / "cat")]) == 1  # fmt: skip


def test_import_page_api_imports_a_server_folder_and_refuses_a_missing_one(client, catalogue, tmp_path):
    (tmp_path / "Reef-9").mkdir()
    (tmp_path / "Reef-9" / "r1.jpg").write_bytes(photo_bytes(90))
    answer = client.post("/api/import/folder", json={"folder": str(tmp_path)}, headers=_headers(client))
    assert answer.status_code == 200 and answer.json()["counts"]["imported"] == 1, answer.text
    assert [p.name for p in catalogue.store.photos_of("Reef-9")] == ["r1.jpg"]
    missing = client.post(
        "/api/import/folder", json={"folder": str(tmp_path / "no")}, headers=_headers(client)
    )
    assert missing.status_code == 400 and "not a folder" in missing.json()["message"]
    plan = client.post("/api/import/plan", json={"csv": "image,id\n", "names": []}, headers=_headers(client))
    assert plan.status_code == 400 and "individual_id" in plan.json()["message"]
    assert "Bulk import" in client.get("/import").text


def test_a_gallery_original_imported_again_is_exported_once(catalogue, serve_gallery, tmp_path):
    from pathlib import Path

    gallery = catalogue.store.conn.execute(
        "SELECT name, individual_id FROM photos WHERE source = 'gallery' ORDER BY name LIMIT 1"
    ).fetchone()
    original = (Path(serve_gallery[0]) / "train_images" / gallery[0]).read_bytes()
    sha, result = catalogue.upload(original, gallery[0], None, "t")
    catalogue.decide(sha, "confirm", gallery[1], "", "t", result.scores())
    done = export.export_with_report(catalogue, tmp_path / "export")
    images = [row["image"] for row in csv.DictReader((done.folder / "train.csv").open())]
    assert [image for image in images if image.startswith(gallery[0].rsplit(".", 1)[0])] == [gallery[0]]
    assert any("left out: the same file" in note for note in done.notes)


def test_import_reads_the_side_from_file_names_only_where_the_csv_gives_none(tmp_path):
    assert [bulk_import.side_from_name(n) for n in ("n_11_leftphoto.jpg", "a/x_Right.JPG", "left.jpg",
                                                     "leftover.jpg", "x_rightphotos.jpg")] == [
        "left", "right", "", "", ""]  # fmt: skip
    (tmp_path / "N-1").mkdir()
    for name in ("nyala_11_leftphoto.jpg", "nyala_11_right.jpg", "plain.jpg"):
        (tmp_path / "N-1" / name).write_bytes(b"x")
    sides = {item.file: item.meta.side for item in bulk_import.plan_folder(tmp_path).items}
    assert sides == {"N-1/nyala_11_leftphoto.jpg": "left", "N-1/nyala_11_right.jpg": "right",
                     "N-1/plain.jpg": "unknown"}  # fmt: skip
    (tmp_path / "ids.csv").write_text(
        "image,individual_id,side\n"
        "N-1/nyala_11_leftphoto.jpg,N-1,\n"  # no side: the name gives it
        "N-1/nyala_11_right.jpg,N-1,left\n"  # the CSV's side wins
        "N-1/plain.jpg,N-1,unknown\n"
    )
    plan = bulk_import.plan_folder(tmp_path, tmp_path / "ids.csv")
    assert [item.meta.side for item in plan.items] == ["left", "left", "unknown"]
    sent = bulk_import.plan_uploads({"N-1/a_right.jpg": b"x"}, None)  # a folder chosen in the browser
    assert sent.items[0].meta.side == "right"


def test_export_answer_gives_absolute_paths_when_the_catalogue_path_is_relative(
    client, catalogue, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(catalogue, "dir", Path("relative-catalogue"))  # as `serve --catalogue cat` gives
    answer = client.post("/api/export", json={}, headers=_headers(client)).json()
    folder = Path(answer["folder"])
    assert folder.is_absolute() and folder.parent == tmp_path / "relative-catalogue" / "exports"
    assert (folder / "train.csv").is_file()
    argv = shlex.split(answer["command"])
    assert argv[argv.index("--data") + 1] == str(folder)
    if "--boxes" in argv:
        assert Path(argv[argv.index("--boxes") + 1]).is_absolute()


def test_inbox_filters_uploads_by_metadata_on_both_tabs(client, catalogue):
    for seed, name, side, who in ((160, "inka.jpg", "left", "Inka"), (161, "jules.jpg", "right", "Jules")):
        files = {"photo": (name, photo_bytes(seed), "image/jpeg")}
        form = {"side": side, "photographer": who}
        assert (
            client.post("/api/identify", files=files, data=form, headers=_headers(client)).status_code == 200
        )
    everything = client.get("/inbox").text
    assert "inka.jpg" in everything and "jules.jpg" in everything and 'name="photographer"' in everything
    inka = client.get("/inbox", params={"photographer": "ink"}).text
    assert "inka.jpg" in inka and "jules.jpg" not in inka and "pass the filter" in inka
    right = client.get("/inbox", params={"side": "right", "photographer": "Jules"}).text
    assert "jules.jpg" in right and "inka.jpg" not in right
    assert "Nothing here passes the filter" in client.get("/inbox", params={"place": "nowhere-at-all"}).text
    assert client.get("/inbox", params={"date_to": "soon"}).status_code == 400
    sha = catalogue.store.conn.execute("SELECT sha256 FROM photos WHERE name = 'inka.jpg'").fetchone()[0]
    body = {"photo": sha, "action": "unresolved", "note": "blurry"}
    assert client.post("/api/decide", json=body, headers=_headers(client)).json()["ok"]
    unresolved = client.get("/inbox", params={"tab": "unresolved", "side": "left", "photographer": "Inka"})
    assert "inka.jpg" in unresolved.text and "blurry" in unresolved.text
    assert '<input type="hidden" name="tab" value="unresolved">' in unresolved.text  # filtering keeps the tab
    assert "inka.jpg" not in client.get("/inbox", params={"tab": "unresolved", "side": "right"}).text


def test_times_are_shown_to_the_minute_in_the_servers_zone_with_the_full_stamp_in_a_tooltip(
    client, catalogue, monkeypatch
):
    import re
    import time

    from tfwhale.serve.app import readable_time

    monkeypatch.setenv("TZ", "Africa/Johannesburg")  # UTC+2, no summer time
    time.tzset()
    try:
        shown = str(readable_time("2026-12-06T23:01:51.521+00:00"))
    finally:
        monkeypatch.undo()
        time.tzset()
    full = "2026-12-06T23:01:51.521+00:00"
    assert shown == f'<time datetime="{full}" title="{full}">2026-12-07 01:01</time>'
    assert str(readable_time("")) == "" and str(readable_time("<b>soon")) == "&lt;b&gt;soon"
    # every stored time a page shows goes through the filter: none is left raw between tags
    sha = catalogue.store.conn.execute(
        "SELECT photo_sha256 FROM decisions WHERE photo_sha256 IS NOT NULL LIMIT 1"
    ).fetchone()[0]
    individual = catalogue.store.conn.execute("SELECT id FROM individuals LIMIT 1").fetchone()[0]
    for url in (f"/photos/{sha}", f"/individuals/{individual}", "/inbox", "/inbox?tab=unresolved"):
        html = client.get(url).text
        raw = re.findall(r">[^<]*\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[^<]*<", html)
        assert raw == [], (url, raw)
    assert re.search(r"<time [^>]*>\d{4}-\d\d-\d\d \d\d:\d\d</time>", client.get(f"/photos/{sha}").text)
