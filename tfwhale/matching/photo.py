"""Local features of a photo as every side takes them: the records' crop at the match size -> SIFT.

The one code path (a contract, like the crop) for the builder's image workers (training and test photos),
the day-one gallery and the query path (new photos in identify and serve). No TensorFlow: the builder's
spawned workers import it.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from tfwhale.contracts.local_features import LocalFeatures
from tfwhale.imaging.crop_box import Box
from tfwhale.imaging.photo_crop import ImageError, ImageSettings, process_image, process_image_keeping_aspect
from tfwhale.matching.features import SiftSettings, extract_sift


def match_crop(data: bytes, box: Box | None, image: ImageSettings, sift: SiftSettings) -> np.ndarray:
    """RGB uint8 crop of a photo's bytes for local features: the records' crop (box, enlarge) at the match
    size instead of the model's input size, so the markings keep their detail; its aspect ratio kept
    (long side match_size) or stretched square as sift.crop says. ImageError if the photo cannot be
    used."""
    crop = process_image_keeping_aspect if sift.crop == "aspect" else process_image
    jpeg, _ = crop(data, box, replace(image, size=sift.match_size, quality=95))
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageError("the match-size crop could not be decoded")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def photo_features(data: bytes, box: Box | None, image: ImageSettings, sift: SiftSettings) -> LocalFeatures:
    """A photo's SIFT features, from its match_crop."""
    return extract_sift(match_crop(data, box, image, sift), sift)
