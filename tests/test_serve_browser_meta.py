"""The catalogue's metadata, bulk import and export round trip in a real browser (headless Chromium).

One catalogue and one server for the module (the tests run in order: import, then filter, then export);
skips, saying why, when Playwright or a Chromium is missing.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra (pip install -e .[serve])")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")

from tests.browser_fixture import NEEDS_CHROMIUM, LiveServer, identify, shot, write_file  # noqa: E402
from tests.serve_fixture import photo_bytes, second_photo  # noqa: E402
from tfwhale.serve import metadata_store  # noqa: E402
from tfwhale.serve.app import create_app  # noqa: E402
from tfwhale.serve.catalogue import Catalogue  # noqa: E402

pytestmark = [NEEDS_CHROMIUM, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def live(serve_gallery, tmp_path_factory):
    catalogue = Catalogue(serve_gallery[1], str(tmp_path_factory.mktemp("browser-meta") / "catalogue"))
    server = LiveServer(create_app(catalogue, reviewer="browser-test"))
    yield server.url, catalogue
    server.stop()


def test_bulk_import_of_photos_and_a_csv(browser, live, tmp_path):
    url, catalogue = live
    photos = [
        write_file(tmp_path, "fin-a1.jpg", photo_bytes(70)),
        write_file(tmp_path, "fin-a2.jpg", second_photo(photo_bytes(70))),
        write_file(tmp_path, "fin-b1.jpg", photo_bytes(71)),
        write_file(tmp_path, "broken.jpg", photo_bytes(72)[:400]),
    ]
    table = tmp_path / "ids.csv"
    table.write_text(
        "image,individual_id,side,date,place,photographer\n"
        "fin-a1.jpg,Fin-A,left,2024-06-01,Hout Bay,Dee\n"
        "fin-a2.jpg,Fin-A,right,2024-06-02,Hout Bay,Dee\n"
        "fin-b1.jpg,Fin-B,left,2024-07-15,Simon's Town,Eli\n"
        "broken.jpg,Fin-C,,,,\n"
        "missing.jpg,Fin-D,,,,\n"
    )
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(f"{url}/import")
    page.set_input_files("#import-files", photos)
    page.set_input_files("#import-csv", str(table))
    page.click("#import-start")
    progress = page.locator("#import-progress")
    sync_api.expect(progress).to_contain_text("import done", timeout=60_000)
    sync_api.expect(progress).to_contain_text("3 imported")
    sync_api.expect(progress).to_contain_text("2 unreadable")
    report = {
        row.locator("td").first.inner_text(): row for row in page.locator("#import-report tbody tr").all()
    }
    assert set(report) == {"fin-a1.jpg", "fin-a2.jpg", "fin-b1.jpg", "broken.jpg", "missing.jpg"}
    assert "ids.csv: row 6: no such file" in report["missing.jpg"].inner_text()
    assert "unreadable" in report["broken.jpg"].inner_text()
    shot(page, "import")
    assert {p.name for p in catalogue.store.photos_of("Fin-A")} == {"fin-a1.jpg", "fin-a2.jpg"}
    assert catalogue.store.individual("Fin-C") is None  # the broken photo registered nothing
    meta = metadata_store.metadata(catalogue.store, catalogue.store.photos_of("Fin-B")[0].sha256)
    assert (meta.side, meta.place, meta.photographer) == ("left", "Simon's Town", "Eli")


def test_metadata_edit_and_filters(browser, live):
    url, catalogue = live
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    queue = catalogue.review_queue()
    target = queue[0]
    page.goto(f"{url}/photos/{target.photo}")
    form = page.locator("#metadata")
    form.locator("select[name=side]").select_option("back")
    form.locator("input[name=date]").fill("2025-02-03 10:00")
    form.locator("input[name=place]").fill("Cape Point")
    form.locator("button[type=submit]").click()
    sync_api.expect(form.locator(".meta-message")).to_contain_text("metadata saved")
    page.reload()
    assert page.locator("#metadata input[name=date]").input_value() == "2025-02-03T10:00:00"
    sync_api.expect(page.locator(".meta-history summary")).to_contain_text("1 metadata version")
    shot(page, "photo-metadata")

    page.goto(f"{url}/review")
    page.select_option(".filter select[name=side]", "back")
    page.fill(".filter input[name=place]", "point")
    page.click(".filter button")
    page.wait_for_url("**/review?*side=back*")
    assert page.locator(".queue li").count() == 1
    sync_api.expect(page.locator(".queue li")).to_contain_text(target.name)
    shot(page, "review-filter")
    page.fill(".filter input[name=date_from]", "2025-03-01")  # a date input takes ISO text
    page.click(".filter button")
    sync_api.expect(page.locator("#current")).to_contain_text("No undecided photo passes the filter")

    page.goto(f"{url}/individuals")
    page.fill(".filter input[name=photographer]", "Dee")
    page.click(".filter button")
    links = page.locator("table a")
    assert links.all_inner_texts() == ["Fin-A"]
    page.select_option(".filter select[name=side]", "left")
    page.fill(".filter input[name=photographer]", "")
    page.fill(".filter input[name=date_from]", "2024-07-01")
    page.click(".filter button")
    assert page.locator("table a").all_inner_texts() == ["Fin-B"]
    shot(page, "individuals-filter")


def test_export_round_trip_through_build_tfrecords(browser, live, tmp_path):
    from tfrecords_builder import cli
    from tfwhale.contracts.records import load_manifest, parse_train_example
    from tfwhale.serve.originals import RecordsOriginals

    url, _ = live
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(f"{url}/export")
    page.click("#export")
    result = page.locator("#export-result")
    sync_api.expect(result).to_contain_text("build-tfrecords")
    sync_api.expect(result).to_contain_text("as uploaded")
    folder = Path(result.inner_text().split("written to ", 1)[1].split(";", 1)[0])
    rows = {row["image"]: row for row in csv.DictReader((folder / "train.csv").open())}
    assert rows["fin-b1.jpg"]["side"] == "left" and rows["fin-b1.jpg"]["place"] == "Simon's Town"

    out = tmp_path / "records"
    argv = [
        "--data",
        str(folder),
        "--no-test",
        "--out",
        str(out),
        "--size",
        "32",
        "--folds",
        "2",
        "--workers",
        "1",
    ]
    argv += ["--boxes", str(folder / "boxes.csv")] if (folder / "boxes.csv").exists() else []
    assert cli.main([*argv, "-q"]) == cli.EXIT_OK  # the metadata columns do not disturb the builder
    manifest = load_manifest(str(out))
    assert {"Fin-A", "Fin-B"} <= set(manifest.individuals)
    import tensorflow as tf

    names = {
        example["image_name"].numpy().decode()
        for example in tf.data.TFRecordDataset(manifest.shard_paths("train")).map(parse_train_example)
    }
    assert {"fin-a1.jpg", "fin-a2.jpg", "fin-b1.jpg"} <= names  # the original names, not hashes
    # what a catalogue on a gallery of these records takes back: the metadata, by original name
    kept = RecordsOriginals.of_records(str(out)).metadata()
    assert (kept["fin-a2.jpg"].side, kept["fin-a2.jpg"].date, kept["fin-a2.jpg"].photographer) == (
        "right",
        "2024-06-02",
        "Dee",
    )
    assert (
        RecordsOriginals.of_records(str(out)).original("gallery", "fin-b1.jpg")
        == (folder / "train_images" / "fin-b1.jpg").read_bytes()
    )


def test_a_section_scrolled_to_the_top_is_not_under_the_status_bar(browser, live, tmp_path):
    url, _ = live
    page = browser.new_page(viewport={"width": 1280, "height": 420})  # short: a new result scrolls to the top

    def heading_below_status() -> None:
        page.wait_for_timeout(300)  # let the scroll settle
        status = page.locator("#status").bounding_box()
        heading = page.locator(".result").first.locator("h2").bounding_box()
        assert page.evaluate("window.scrollY") > 0  # the page did scroll the section up
        assert heading["y"] >= status["y"] + status["height"], (heading, status)

    page.goto(url)
    result = identify(page, write_file(tmp_path, "scroll.jpg", photo_bytes(171)))
    sync_api.expect(page.locator("#status")).to_contain_text("done: 1 identified")
    heading_below_status()  # the new result, scrolled to the top
    result.locator(".new-id").fill("Scroll-1")
    result.locator("button.register").click()
    sync_api.expect(page.locator("#status")).to_contain_text("registered as Scroll-1")
    sync_api.expect(page.locator(".result").first.locator(".assigned")).to_contain_text("Scroll-1")
    identify(page, write_file(tmp_path, "scroll2.jpg", photo_bytes(172)))  # the next photo after a decision
    sync_api.expect(page.locator("#status")).to_contain_text("done: 1 identified")
    heading_below_status()
    page.close()
