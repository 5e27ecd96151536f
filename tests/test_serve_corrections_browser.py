"""The catalogue's corrections and inbox in a real browser (headless Chromium via Playwright): assign a
photo to an individual outside the top 5, undo and reassign, merge, and the inbox after a restart.

One catalogue and server for the module (the tests build on each other's photos only where they say).
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra (pip install -e .[serve])")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")

from tests.browser_fixture import NEEDS_CHROMIUM, LiveServer, identify, shot  # noqa: E402
from tests.browser_fixture import write_file as write  # noqa: E402
from tests.serve_fixture import photo_bytes  # noqa: E402
from tfwhale.serve.app import create_app  # noqa: E402
from tfwhale.serve.catalogue import Catalogue  # noqa: E402

pytestmark = [NEEDS_CHROMIUM, pytest.mark.timeout(600)]
expect = sync_api.expect


@pytest.fixture(scope="module")
def live(serve_gallery, tmp_path_factory):
    folder = tmp_path_factory.mktemp("corrections")
    catalogue = Catalogue(serve_gallery[1], str(folder / "catalogue"))
    server = LiveServer(create_app(catalogue, reviewer="browser-test"))
    yield server.url, catalogue, folder
    server.stop()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    yield page
    page.close()


def in_view(page, locator) -> bool:
    box = locator.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= page.viewport_size["height"]


def test_assign_to_an_individual_outside_the_top_5(page, live, tmp_path):
    url, catalogue, _ = live
    page.goto(url)
    paths = [write(tmp_path, f"a{i}.jpg", photo_bytes(70 + i)) for i in range(2)]
    result = identify(page, paths)
    assert page.locator("#files").evaluate("input => input.files.length") == 0  # the picker starts afresh
    assert "(1)" not in result.inner_text() and "(n)" not in result.inner_text()  # no keys here
    shown = set(result.locator(".candidate").evaluate_all("rows => rows.map(r => r.dataset.label)"))
    outside = sorted(catalogue.store.individual_ids() - shown)[0]
    result.locator(".new-id").fill(outside)  # an existing id typed into Register: no dead end any more
    result.locator("button.register").click()
    expect(result.locator(".message")).to_contain_text("exists already")
    expect(result.locator(".assign-search")).to_have_value(outside)
    found = result.locator(".assign-found .found").first
    expect(found.locator("button.assign-to")).to_have_text(f"Assign to {outside}")
    assert found.locator("img.thumb").count() >= 1  # its photos, to check by eye
    shot(page, "assign-search", result)
    found.locator("button.assign-to").click()
    message = page.locator(".result .message").first
    expect(message).to_contain_text(f"confirmed as {outside}")
    assert in_view(page, message)  # where the reviewer is looking
    photo = page.locator(".result").first.get_attribute("data-photo")
    assert catalogue.store.photo(photo).individual_id == outside
    # registering the other photo under its proposed id moves every proposal on to a free id
    other = page.locator(".result").nth(1)
    proposed = other.locator(".new-id").input_value()
    other.locator("button.register").click()
    expect(page.locator(".result").nth(1).locator(".message")).to_contain_text(f"registered as {proposed}")
    later = identify(page, write(tmp_path, "a2.jpg", photo_bytes(72)))
    fresh_id = later.locator(".new-id").input_value()
    assert fresh_id != proposed and fresh_id not in catalogue.store.individual_ids()


def test_undo_and_reassign_on_the_photo_page(page, live, tmp_path):
    url, catalogue, _ = live
    page.goto(url)
    result = identify(page, write(tmp_path, "u.jpg", photo_bytes(75)))
    photo = result.get_attribute("data-photo")
    labels = result.locator("button.confirm").evaluate_all("bs => bs.map(b => b.dataset.individual)")
    first, second = labels[:2]
    result.locator("button.confirm").first.click()
    expect(page.locator(".result .message").first).to_contain_text(f"confirmed as {first}")
    page.goto(f"{url}/photos/{photo}")
    section = page.locator(".result")
    expect(section.locator(".assigned")).to_contain_text(first)
    section.locator(f'button.confirm[data-individual="{second}"]').click()  # reassign here
    expect(page.locator(".result .message")).to_contain_text(f"reassigned to {second}")
    assert catalogue.store.photo(photo).individual_id == second
    shot(page, "reassigned", page.locator(".result"))
    confirmed, reassigned = (row["id"] for row in catalogue.store.decisions(photo=photo))
    page.locator(".result button.undo").click()
    expect(page.locator(".result .message")).to_contain_text(f"undid decision {reassigned}")
    assert catalogue.store.photo(photo).individual_id == first  # back to before the reassign
    page.locator(".result button.undo").click()
    expect(page.locator(".result .message")).to_contain_text(f"undid decision {confirmed}")
    assert catalogue.store.photo(photo).individual_id is None
    expect(page.locator(".result button.register")).to_be_enabled()  # undecided: every button back
    actions = [row["action"] for row in catalogue.store.decisions(photo=photo)]
    assert actions == ["confirm", "reassign", "undo", "undo"]  # nothing overwritten


def test_merge_two_individuals_and_undo_it(page, live, tmp_path):
    url, catalogue, _ = live
    page.goto(url)
    result = identify(page, write(tmp_path, "m.jpg", photo_bytes(77)))
    result.locator(".new-id").fill("Merge-Me")
    result.locator("button.register").click()
    expect(page.locator(".result .message").first).to_contain_text("registered as Merge-Me")
    kept = sorted(catalogue.store.individual_ids() - {"Merge-Me"})[0]
    photo = result.get_attribute("data-photo")
    page.goto(f"{url}/individuals/Merge-Me")
    page.fill("#merge-into", kept)
    page.click("#merge")
    expect(page.locator("#correct-message")).to_contain_text(f"merged Merge-Me into {kept}")
    expect(page.locator("p.assigned")).to_contain_text(f"Merged into {kept}")  # after the reload
    assert catalogue.store.photo(photo).individual_id == kept
    page.goto(f"{url}/individuals/{kept}")
    assert page.locator(f'a[href="/photos/{photo}"]').count() == 1  # its photos are the kept one's
    shot(page, "merged")
    page.goto(f"{url}/individuals/Merge-Me")
    page.locator("button.undo-row").click()
    expect(page.locator("#correct-message")).to_contain_text("undid decision")
    page.wait_for_load_state()
    expect(page.locator("h2").first).to_contain_text("1 photo(s)")
    assert catalogue.store.photo(photo).individual_id == "Merge-Me"


def test_the_inbox_survives_a_restart(page, live, serve_gallery, tmp_path):
    url, _, folder = live
    page.goto(url)
    result = identify(page, write(tmp_path, "inbox-photo.jpg", photo_bytes(79)))
    labels = result.locator(".candidate").evaluate_all("rows => rows.map(r => r.dataset.label)")
    restarted = LiveServer(create_app(Catalogue(serve_gallery[1], str(folder / "catalogue"))))
    try:
        page.goto(f"{restarted.url}/inbox")
        row = page.locator("table.inbox tr", has_text="inbox-photo.jpg")
        expect(row).to_have_count(1)
        shot(page, "inbox")
        row.locator("a").last.click()
        expect(page.locator(".result .stored")).to_contain_text("The answer given at upload")
        again = page.locator(".candidate").evaluate_all("rows => rows.map(r => r.dataset.label)")
        assert again == labels
    finally:
        restarted.stop()
