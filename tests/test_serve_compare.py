"""The compare view's server side: crops mapped back to photo pixels (hand-worked), the verdict in words,
and /api/matches: verified matches in each photo's own pixels, that a known transform explains."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra (pip install -e .[serve])")

from tests.serve_fixture import second_photo
from tests.test_serve_api import client, upload  # noqa: F401 - the catalogue app's test client fixture
from tests.textures import texture
from tfwhale.contracts.gallery_manifest import ThresholdPolicy
from tfwhale.imaging.crop_frame import crop_to_photo, displayed_size
from tfwhale.imaging.photo_crop import ImageSettings
from tfwhale.serve.captions import photo_caption
from tfwhale.serve.compare import MAX_PAIRS
from tfwhale.serve.store import Photo
from tfwhale.serve.verdict import explain

ANGLE, SCALE, MARGIN = 15.0, 0.9, 20  # the second shot: turned, scaled, 20 px cut from each side


def test_crop_positions_map_back_to_the_photo_by_hand():
    square = ImageSettings(size=224, enlarge=1.0, resize_mode="square")
    # box 100..200 x 50..150 of a 400x200 photo, stretched into a 512 canvas: the canvas centre is the box's
    got = crop_to_photo(
        np.array([[256, 256], [0, 0], [512, 512]]), 512, (400, 200), (100, 50, 200, 150), square
    )
    np.testing.assert_allclose(got, [[150, 100], [100, 50], [200, 150]])
    # letterbox: the whole 400x200 photo fitted into 100x100 is 100x50 at rows 25..75
    letterbox = ImageSettings(size=224, enlarge=1.2, resize_mode="letterbox")
    got = crop_to_photo(np.array([[50, 50], [0, 25], [100, 75]]), 100, (400, 200), None, letterbox)
    np.testing.assert_allclose(got, [[200, 100], [0, 0], [400, 200]])


def test_displayed_size_follows_the_exif_orientation():
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40x20, shown turned by 90 degrees
    Image.new("RGB", (40, 20)).save(out, "JPEG", exif=exif)
    assert displayed_size(out.getvalue()) == (20, 40)


def test_the_verdict_says_why_it_leans_new_and_how_far_the_threshold_holds():
    policy = ThresholdPolicy(
        0.55, source="auto (OOF)", separation_auc=0.58, warnings=("few new individuals",)
    )
    verdict = explain(["new_individual", "A", "B"], [None, 0.41, 0.2], 0.55, policy, fused=True)
    assert verdict.score_name == "P(same)" and verdict.unreliable
    assert verdict.why == (
        "leans new: best P(same) 0.410 is not above the threshold 0.550 (set by auto (OOF), known/new "
        "AUC 0.58): known and new barely separate"
    )
    assert verdict.warnings == ("few new individuals",)
    known = explain(["A", "new_individual"], [0.91, None], 0.5, ThresholdPolicy(0.5), fused=False)
    assert known.score_name == "similarity" and known.unreliable  # a fixed threshold was never tuned
    assert known.why.startswith("leans known: best similarity 0.910 is above the threshold 0.500 by 0.410")
    assert "no known/new AUC recorded" in known.reliability and "unknown" in known.reliability
    tuned = explain(["A"], [0.8], 0.5, ThresholdPolicy(0.5, source="auto (OOF)", separation_auc=0.93), False)
    assert not tuned.unreliable and tuned.why.endswith("AUC 0.93): known and new separate well")


def test_a_caption_shows_the_name_and_what_metadata_knows():
    photo = Photo("ab" * 32, "upload", "field/2024/IMG_0042.JPG", "ab" * 32, "", None, "", "")

    class Meta:
        side, date, place = "left", "2024-05-01T10:11:12", ""

    assert photo_caption(photo) == "IMG_0042.JPG"
    assert photo_caption(photo, Meta()) == "IMG_0042.JPG · left · 2024-05-01"
    assert photo_caption(None) == ""


def _jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def photo_pair() -> tuple[bytes, bytes, np.ndarray]:
    """(first photo: a 400 px texture at x 100..500 of a 600x400 grey photo, the second shot of it,
    the 2x3 map from texture pixels to the second shot's pixels)."""
    markings = texture(7, 400)
    first = np.full((400, 600, 3), 128, np.uint8)
    first[:, 100:500] = markings
    turn = cv2.getRotationMatrix2D((200, 200), ANGLE, SCALE)
    second = cv2.warpAffine(markings, turn, (400, 400), borderValue=(128, 128, 128))[
        MARGIN:-MARGIN, MARGIN:-MARGIN
    ]
    turn[:, 2] -= MARGIN
    return _jpeg(first), _jpeg(np.ascontiguousarray(second)), turn


def _uploaded(client, data: bytes, name: str, box: str = "") -> str:  # noqa: F811
    response = upload(client, data, name, box)
    assert response.status_code == 200, response.text
    return response.text.split('data-photo="', 1)[1].split('"', 1)[0]


def test_matches_are_in_each_photos_own_pixels(client):  # noqa: F811
    first, second, turn = photo_pair()
    first_sha = _uploaded(client, first, "first.jpg", box="100 0 500 400")  # the box crops to the texture
    second_sha = _uploaded(client, second, "second.jpg")
    answer = client.get(f"/api/matches?query={second_sha}&photo={first_sha}").json()
    assert (
        answer["ok"] and answer["inliers"] >= 20 and len(answer["pairs"]) == min(answer["inliers"], MAX_PAIRS)
    )
    assert (answer["query"]["width"], answer["query"]["height"]) == (360, 360)
    assert (answer["photo"]["width"], answer["photo"]["height"], answer["photo"]["url"]) == (
        600, 400, f"/blob/{first_sha}.jpg",  # the upload as uploaded, not its crop
    )  # fmt: skip
    pairs = np.asarray(answer["pairs"])
    assert (
        (pairs >= 0).all()
        and (pairs[:, [0, 2]] <= [360, 600]).all()
        and (pairs[:, [1, 3]] <= [360, 400]).all()
    )
    # the second shot's positions are where the known turn puts the first photo's positions
    in_texture = pairs[:, 2:] - [100, 0]
    expected = in_texture @ turn[:, :2].T + turn[:, 2]
    errors = np.linalg.norm(expected - pairs[:, :2], axis=1)
    assert np.median(errors) < 3.0, np.percentile(errors, [50, 90])
    # the page shows both pictures and draws the matches when asked
    page = client.get(f"/compare?query={second_sha}&photo={first_sha}")
    assert page.status_code == 200
    assert f'src="/blob/{first_sha}.jpg"' in page.text and f'src="/blob/{second_sha}.jpg"' in page.text
    assert (
        "first.jpg" in page.text and 'data-matches="off"' in page.text
    )  # this gallery has no local features


def test_bad_compare_requests_get_a_4xx_with_a_message(client):  # noqa: F811
    sha = _uploaded(client, _jpeg(texture(8, 200)), "one.jpg")
    unknown = "0" * 64
    answer = client.get(f"/api/matches?query={sha}&photo={unknown}")
    assert answer.status_code == 404 and "photo: no photo 000000000000" in answer.json()["message"]
    answer = client.get(f"/api/matches?query=../../etc&photo={sha}")
    assert (
        answer.status_code == 400
        and "query" in answer.json()["message"]
        and "not a photo hash" in answer.json()["message"]
    )
    answer = client.get(f"/api/matches?photo={sha}")
    assert answer.status_code == 400 and "query" in answer.json()["message"]
    page = client.get(f"/compare?query={unknown}&photo={sha}")
    assert page.status_code == 404 and "no photo" in page.text
    assert client.get(f"/compare/original/{sha}").status_code == 404  # an upload has no gallery original
    # a format browsers do not show (TIFF) is compared on its crop
    tiff = io.BytesIO()
    Image.fromarray(texture(8, 200)).save(tiff, "TIFF")
    tiff_sha = _uploaded(client, tiff.getvalue(), "scan.tif")
    shown = client.get(f"/api/matches?query={tiff_sha}&photo={sha}").json()["query"]
    crop = client.catalogue.store.photo(tiff_sha).crop_sha256
    assert shown["url"] == f"/blob/{crop}.jpg" and not shown["original"] and shown["keypoints"] > 0
    # a photo with no markings matches nothing: an empty answer, not an error
    flat = _uploaded(client, _jpeg(np.full((120, 160, 3), 128, np.uint8)), "fog.jpg")
    answer = client.get(f"/api/matches?query={flat}&photo={sha}").json()
    assert (
        answer["ok"]
        and answer["inliers"] == 0
        and answer["pairs"] == []
        and answer["query"]["keypoints"] == 0
    )
    # a picture gone from the catalogue folder: 422 naming the photo
    for digest in {flat, client.catalogue.store.photo(flat).crop_sha256}:
        client.catalogue.blobs.path(digest).unlink()
    answer = client.get(f"/api/matches?query={flat}&photo={sha}")
    assert answer.status_code == 422 and "fog.jpg: its picture cannot be read" in answer.json()["message"]


def test_candidate_rows_link_to_the_compare_view_and_say_what_the_scores_are(client):  # noqa: F811
    from tfwhale.serve import metadata_store
    from tfwhale.serve.metadata import PhotoMeta

    first = _uploaded(client, _jpeg(texture(9, 200)), "field/IMG_0042.jpg")
    meta = PhotoMeta(date="2024-05-01T10:11:12", place="Kruger", side="left")
    metadata_store.set_metadata(client.catalogue.store, first, meta, "typed", "tester")
    client.catalogue.decide(first, "register", "Stripe", "", "tester", [])
    # another photo of it (mirrored; flip TTA): the same photo saved again would be its twin, not a candidate
    response = upload(client, second_photo(_jpeg(texture(9, 200))), "again.jpg")
    sha = response.text.split('data-photo="', 1)[1].split('"', 1)[0]
    assert sha != first and 'data-label="Stripe"' in response.text
    assert "IMG_0042.jpg · left · 2024-05-01 · Kruger" in response.text  # the caption under Stripe's photo
    assert response.text.count(f'href="/compare?query={sha}&amp;photo=') >= 5  # every candidate's photos
    assert "similarity 0." in response.text and "P(same)" not in response.text  # not fused: cosines
    assert "leans " in response.text and "how reliable?" in response.text
    assert response.text.count('class="show-matches"') >= 4
