"""The compare view and the candidate layout in Chromium: both panes zoom and pan together, the verified
matches stay on their keypoints and toggle, and five candidates with their buttons fit a 1366x768 screen.

TFWHALE_SCREENSHOTS=docs refreshes the README's docs/serve-*-1366.png (see tests/test_serve_browser.py).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra (pip install -e .[serve])")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")

from tests.browser_fixture import NEEDS_CHROMIUM, SHOTS  # noqa: E402
from tests.browser_fixture import shot as _shot  # noqa: E402
from tests.browser_fixture import write_file as _write  # noqa: E402
from tests.test_serve_browser import _identify, live  # noqa: E402,F401 - the live app fixture
from tests.test_serve_compare import photo_pair  # noqa: E402

pytestmark = [NEEDS_CHROMIUM, pytest.mark.timeout(300)]
LAPTOP = {"width": 1366, "height": 768}


def _reencoded(data: bytes) -> bytes:
    """The same photo saved again (another file, the same animal and pixels to within JPEG noise)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def _catalogue_with_a_pair(catalogue):
    """(first photo, second shot) uploaded; the first registered as Stripe."""
    first, second, _ = photo_pair()
    first_sha, _ = catalogue.upload(first, "stripe-2024-05-01.jpg", (100, 0, 500, 400), "t")
    catalogue.decide(first_sha, "register", "Stripe", "", "t", [])
    second_sha, _ = catalogue.upload(second, "stripe-second-shot.jpg", None, "t")
    return first, first_sha, second_sha


def _small_shot(page, name: str) -> None:
    """A screenshot as a 48-colour PNG: the README's pictures stay well under 200 kB."""
    from PIL import Image

    _shot(page, name)
    path = SHOTS / f"serve-{name}.png"
    Image.open(path).convert("RGB").quantize(colors=48).save(path, optimize=True)


def _state(page) -> list[tuple[str, str]]:
    found = page.eval_on_selector_all(".pane", "panes => panes.map(p => [p.dataset.zoom, p.dataset.pan])")
    return [tuple(pane) for pane in found]


def _inside(box, viewport) -> bool:
    return (
        box is not None and box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"] and box["x"] >= 0
    )


def test_compare_view_zooms_both_panes_together_and_draws_the_matches(browser, live):  # noqa: F811 - live
    url, catalogue = live
    _, first_sha, second_sha = _catalogue_with_a_pair(catalogue)
    page = browser.new_page(viewport=LAPTOP)
    page.goto(f"{url}/compare?query={second_sha}&photo={first_sha}")
    assert not page.locator(
        ".matches-toggle"
    ).is_checked()  # this gallery has no local features: off at first
    page.keyboard.press("m")
    sync_api.expect(page.locator(".match-count")).to_contain_text("verified matches")
    marks = page.eval_on_selector_all(
        ".pane svg.marks", "svgs => svgs.map(s => s.querySelectorAll('circle').length)"
    )
    assert marks[0] == marks[1] >= 20
    assert page.locator("svg.links line").count() >= 10
    assert _state(page) == [("1.0000", "0.0,0.0")] * 2

    # the wheel over one pane zooms both, about the cursor
    pane = page.locator(".pane").first.bounding_box()
    page.mouse.move(pane["x"] + pane["width"] * 0.3, pane["y"] + pane["height"] * 0.4)
    page.mouse.wheel(0, -400)
    page.wait_for_function("document.querySelector('.pane').dataset.zoom > 1.5")
    (zoom, pan), other = _state(page)
    assert other == (zoom, pan) and pan != "0.0,0.0"
    page.click(".zoom-in")
    assert float(_state(page)[1][0]) == pytest.approx(1.5 * float(zoom), rel=1e-3)
    # dragging the other pane pans both by the same amount
    photo = page.locator(".pane").nth(1).bounding_box()
    page.mouse.move(photo["x"] + 200, photo["y"] + 200)
    page.mouse.down()
    page.mouse.move(photo["x"] + 260, photo["y"] + 170, steps=4)
    page.mouse.up()
    (zoom2, pan2), other = _state(page)
    assert other == (zoom2, pan2) and pan2 != pan
    # each drawn line still starts on its keypoint's circle in the query pane after zooming and panning
    ends = page.evaluate("""() => {
        const line = document.querySelector('svg.links line');
        const box = line.ownerSVGElement.getBoundingClientRect();
        const marks = document.querySelectorAll('.pane svg.marks')[0];
        const circle = marks.querySelectorAll('circle')[line.dataset.i];
        const c = circle.getBoundingClientRect();
        return [box.left + Number(line.getAttribute('x1')), box.top + Number(line.getAttribute('y1')),
                c.left + c.width / 2, c.top + c.height / 2];
    }""")
    assert ends[0] == pytest.approx(ends[2], abs=1.5) and ends[1] == pytest.approx(ends[3], abs=1.5)
    page.keyboard.press("0")
    assert _state(page) == [("1.0000", "0.0,0.0")] * 2
    _small_shot(page, "compare-1366")
    page.keyboard.press("m")  # off: no lines, no circles
    assert page.locator("svg.links line").count() == 0
    assert page.eval_on_selector(".pane svg.marks", "s => getComputedStyle(s).display") == "none"


def test_five_candidates_and_their_buttons_fit_a_laptop_screen(browser, live, tmp_path):  # noqa: F811
    url, catalogue = live
    first, _, _ = _catalogue_with_a_pair(catalogue)
    page = browser.new_page(viewport=LAPTOP)
    page.goto(url)
    result = _identify(page, _write(tmp_path, "stripe-again.jpg", _reencoded(first)))
    page.wait_for_timeout(100)  # the result scrolls into view
    rows = result.locator(".candidate")
    assert rows.count() == 5 and rows.first.get_attribute("data-label") == "Stripe"

    def all_in_view():
        assert _inside(result.locator(".query img").bounding_box(), LAPTOP)
        for i in range(5):
            button = rows.nth(i).locator("button.confirm, .head b")  # the new_individual row has no confirm
            assert _inside(button.first.bounding_box(), LAPTOP), f"candidate {i + 1} is below the fold"

    all_in_view()
    _small_shot(page, "result-1366")
    assert "P(same)" not in result.inner_text() and "leans" in result.locator(".verdict-why").inner_text()
    # the row's match strip: the query and Stripe's photo side by side with the verified matches across
    rows.first.locator(".show-matches").click()
    sync_api.expect(rows.first.locator(".match-strip small")).to_contain_text("verified matches")
    assert rows.first.locator(".match-strip line").count() >= 10
    rows.first.locator(".show-matches").click()
    assert rows.first.locator(".match-strip").count() == 0

    page.goto(f"{url}/review")
    result = page.locator("#current .result")
    rows = result.locator(".candidate")
    assert rows.count() == 5
    all_in_view()
    _small_shot(page, "review-1366")
    page.keyboard.press("c")  # the first candidate, side by side
    page.wait_for_url("**/compare?query=*")
    assert page.locator(".pane").count() == 2
    opened = page.url
    page.keyboard.press("]")  # the next candidate photo, in place
    page.wait_for_function(f"location.href !== {opened!r} && document.querySelectorAll('.pane').length == 2")
    page.keyboard.press("Escape")  # back to the queue, not to the previous photo
    page.wait_for_url("**/review*")
