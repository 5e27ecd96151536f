"""One query path: predict's test pass, identify and the catalogue app answer the same photos the same way."""

from __future__ import annotations

import pytest

from tests.run_fixture import csv_rows
from tfwhale import identify
from tfwhale.core import files
from tfwhale.imaging.crop_box import parse_box_text


@pytest.fixture(scope="module")
def test_photos(serve_gallery):
    """(photo path, box text) of every test photo of the gallery's records, and predict's answers."""
    data, out = serve_gallery
    boxes = {row["image"]: row["box"] for row in csv_rows(f"{data}/boxes.csv")}
    photos = [(f"{data}/test_images/{row['image']}", boxes.get(row["image"], "")) for row in csv_rows(
        f"{data}/test_solution.csv"
    )]  # fmt: skip
    submission = {row["image"]: row["predictions"].split(" ") for row in csv_rows(f"{out}/submission.csv")}
    return photos, submission


def test_identify_answers_every_test_photo_as_predict_did(serve_gallery, test_photos):
    _, out = serve_gallery
    photos, submission = test_photos
    argv = [p for p, _ in photos] + ["--gallery", out] + [a for _, b in photos for a in ("--box", b)]
    answers = identify.identify(identify.parse_args(argv))
    assert len(answers) == len(photos) > 5
    for answer, (photo, _) in zip(answers, photos, strict=True):
        assert answer.labels == submission[files.basename(photo)], photo


def test_the_catalogue_app_answers_every_test_photo_as_predict_did(serve_gallery, test_photos, tmp_path):
    from tfwhale.serve.catalogue import Catalogue

    _, out = serve_gallery
    photos, submission = test_photos
    catalogue = Catalogue(out, str(tmp_path / "catalogue"))
    for photo, box in photos:
        _, result = catalogue.upload(files.read_bytes(photo), files.basename(photo), parse_box_text(box), "")
        assert [c.label for c in result.candidates] == submission[files.basename(photo)], photo
    # and a stored test photo (predict's own embedding) is answered the same way again
    queue = catalogue.review_queue()
    assert queue
    stored = catalogue.result_for(queue[0].photo)
    assert [c.label for c in stored.candidates] == submission[queue[0].name]
