"""The match crop (query.local.match_crop): the shared extraction contract of builder, day-one gallery and
query path. It keeps the crop's aspect ratio by default; settings recorded before the choice was
recorded mean the square stretch they were made with."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from tests.textures import texture
from tfwhale.imaging.crop_frame import aspect_crop_to_photo
from tfwhale.imaging.photo_crop import ImageSettings
from tfwhale.matching.features import SiftSettings
from tfwhale.matching.photo import match_crop


def jpeg(width: int, height: int) -> bytes:
    """A textured photo whose left half is dark and right half bright (to see where the crop went)."""
    image = cv2.resize(texture(5, 200), (width, height))
    image[:, : width // 2] //= 4
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


IMAGE = ImageSettings(size=224, enlarge=1.0)


def test_the_default_crop_keeps_the_aspect_ratio_and_the_square_one_stretches():
    data = jpeg(800, 400)
    kept = match_crop(data, None, IMAGE, SiftSettings(match_size=512))
    assert kept.shape == (256, 512, 3) and kept.dtype == np.uint8
    square = match_crop(data, None, IMAGE, SiftSettings(match_size=512, crop="square"))
    assert square.shape == (512, 512, 3)
    # a box: the crop is the box (enlarge 1.0), long side at the match size, the bright half on its right
    box = (300.0, 100.0, 700.0, 300.0)  # 400 x 200, 100 px of the dark half and 300 of the bright one
    boxed = match_crop(data, box, IMAGE, SiftSettings(match_size=256))
    assert boxed.shape == (128, 256, 3)
    assert boxed[:, :50].mean() < 0.5 * boxed[:, 80:].mean()
    # the gallery's enlarge applies to both crops alike: 1.5 x the box, clamped to the photo
    wider = match_crop(data, box, dataclasses.replace(IMAGE, enlarge=1.5), SiftSettings(match_size=256))
    assert wider.shape == (128, 256, 3) and not np.array_equal(wider, boxed)


def test_stored_settings_without_a_crop_mean_the_square_crop_they_were_made_with():
    recorded_before = {"match_size": 512, "max_keypoints": 1000, "contrast_threshold": 0.04}
    assert SiftSettings.from_stored(recorded_before).crop == "square"
    current = dataclasses.asdict(SiftSettings())
    assert current["crop"] == "aspect" and SiftSettings.from_stored(current) == SiftSettings()
    with pytest.raises(ValueError, match="unknown local-feature settings"):
        SiftSettings.from_stored({**current, "colour": True})
    with pytest.raises(ValueError, match="crop must be one of"):
        SiftSettings.from_stored({**current, "crop": "circle"})


def test_positions_in_an_aspect_kept_crop_map_back_to_the_photo_by_hand():
    # the whole 400 x 200 photo kept its aspect in a 512 x 256 matching image: a plain 400/512 scale
    whole = aspect_crop_to_photo(
        np.array([[256, 128], [0, 0], [512, 256]]), (512, 256), (400, 200), None, IMAGE
    )
    np.testing.assert_allclose(whole, [[200, 100], [0, 0], [400, 200]])
    # box 100..200 x 50..150 (enlarge 1.0): 100 x 100 at 512 x 512, offset by the box's corner
    boxed = aspect_crop_to_photo(np.array([[256, 256]]), (512, 512), (400, 200), (100, 50, 200, 150), IMAGE)
    np.testing.assert_allclose(boxed, [[150, 100]])
