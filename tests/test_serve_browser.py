"""The catalogue app in a real browser (headless Chromium via Playwright): the whole loop, token, bad upload.

Screenshots of each page go to test-screenshots/serve-*.png (git ignores it); TFWHALE_SCREENSHOTS=docs
refreshes the README's docs/serve-*.png. Skips, saying why, when
Playwright or a Chromium is missing; .ci/run installs Debian's chromium so that CI runs them.
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra (pip install -e .[serve])")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")

from tests.browser_fixture import NEEDS_CHROMIUM, LiveServer  # noqa: E402
from tests.browser_fixture import shot as _shot  # noqa: E402
from tests.browser_fixture import write_file as _write  # noqa: E402
from tests.serve_fixture import photo_bytes, second_photo  # noqa: E402
from tfwhale.serve.app import create_app  # noqa: E402
from tfwhale.serve.catalogue import Catalogue  # noqa: E402

pytestmark = [NEEDS_CHROMIUM, pytest.mark.timeout(600)]


@pytest.fixture
def live(serve_gallery, tmp_path):
    catalogue = Catalogue(serve_gallery[1], str(tmp_path / "catalogue"))
    server = LiveServer(create_app(catalogue, reviewer="browser-test"))
    yield server.url, catalogue
    server.stop()


def _identify(page, path: str):
    """Upload one photo on the identify page; returns its result section once its candidates show."""
    before = page.locator(".result").count()
    page.set_input_files("#files", path)
    page.click("#identify")
    page.wait_for_function(f"document.querySelectorAll('.result').length > {before}")
    return page.locator(".result").first


def test_the_catalogue_loop_in_a_browser(browser, live, tmp_path):
    url, catalogue = live
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    # a box drawn on the photo before identifying goes with the upload
    page.set_input_files("#files", _write(tmp_path, "boxed.jpg", photo_bytes(30, size=200)))
    image = page.locator(".pending img").first.bounding_box()
    page.mouse.move(image["x"] + 10, image["y"] + 10)
    page.mouse.down()
    page.mouse.move(image["x"] + image["width"] - 10, image["y"] + image["height"] - 10, steps=5)
    page.mouse.up()
    assert "box" in page.locator(".pending div").last.inner_text()
    _shot(page, "upload")
    page.click("#identify")
    page.wait_for_selector(".result")
    boxed = catalogue.store.photo(page.locator(".result").first.get_attribute("data-photo"))
    assert boxed.box != ""

    # confirm a candidate
    result = _identify(page, _write(tmp_path, "one.jpg", photo_bytes(31)))
    assert result.locator(".candidate").count() == 5
    _shot(page, "candidates", result)
    known = result.locator("button.confirm").first
    label = known.get_attribute("data-individual")
    known.click()
    sync_api.expect(result.locator(".message")).to_contain_text(f"confirmed as {label}")

    # register a new individual, then a second photo of it comes back with it on top
    result = _identify(page, _write(tmp_path, "two.jpg", photo_bytes(32)))
    result.locator(".new-id").fill("Moby-Dick")
    result.locator(".note").fill("notch <b>left</b>")
    result.locator("button.register").click()
    sync_api.expect(result.locator(".message")).to_contain_text("registered as Moby-Dick")
    again = _identify(page, _write(tmp_path, "three.jpg", second_photo(photo_bytes(32))))
    assert again.locator(".candidate").first.get_attribute("data-label") == "Moby-Dick"
    _shot(page, "identify", again)

    page.goto(f"{url}/individuals?q=Moby")
    page.click("text=Moby-Dick")
    sync_api.expect(page.locator("h1")).to_contain_text("Moby-Dick")
    assert "notch <b>left</b>" in page.locator("table").inner_text()  # shown as text, not markup
    _shot(page, "individual")

    page.goto(f"{url}/review")
    assert page.locator("#current .candidate").count() == 5
    _shot(page, "review")
    page.keyboard.press("u")  # leave it unresolved: the queue moves on
    page.wait_for_url("**/review?at=*")
    assert len(catalogue.store.decisions()) == 3

    page.goto(f"{url}/export")
    page.click("#export")
    sync_api.expect(page.locator("#export-result")).to_contain_text("build-tfrecords")
    _shot(page, "export")


def test_bad_upload_is_refused_on_the_page_and_the_next_one_works(browser, live, tmp_path):
    url, catalogue = live
    page = browser.new_page(viewport={"width": 1280, "height": 700})
    page.goto(url)
    page.set_input_files("#files", _write(tmp_path, "notes.jpg", b"not a photo, a shopping list"))
    page.click("#identify")
    sync_api.expect(page.locator("#results .error")).to_contain_text("not an image format")
    _shot(page, "bad-upload")
    uploads = catalogue.store.conn.execute("SELECT COUNT(*) FROM photos WHERE source = 'upload'")
    assert uploads.fetchone()[0] == 0
    result = _identify(page, _write(tmp_path, "good.jpg", photo_bytes(33)))
    assert result.locator(".candidate").count() == 5


def test_token_is_required_off_loopback(browser, serve_gallery, tmp_path):
    catalogue = Catalogue(serve_gallery[1], str(tmp_path / "catalogue"))
    server = LiveServer(create_app(catalogue, token="tok-123"))
    try:
        page = browser.new_page()
        response = page.goto(server.url)
        assert response.status == 401 and "access token required" in page.content()
        _shot(page, "token-required")
        page.goto(f"{server.url}/?token=tok-123")
        assert "token" not in page.url  # moved into a cookie
        sync_api.expect(page.locator("h1")).to_contain_text("Identify new photos")
        result = _identify(page, _write(tmp_path, "t.jpg", photo_bytes(34)))  # POSTs carry the cookie
        assert result.locator(".candidate").count() == 5
    finally:
        server.stop()
