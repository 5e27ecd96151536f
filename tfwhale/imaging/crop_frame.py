"""Where a crop's pixels came from: positions in a square crop (process_image's) back to the photo.

The inverse of the crop contract (photo_crop.process_image): the photo's displayed frame (after its EXIF
orientation) -> the enlarged box, clamped (crop_box.crop_region) -> stretched ("square") or fitted and
centred on grey ("letterbox") into a size x size canvas, or resized with its aspect ratio kept (the
default match crop). The catalogue app draws matches found in match-size crops on the photos as
uploaded with it.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image

from tfwhale.imaging.crop_box import Box, crop_region
from tfwhale.imaging.photo_crop import ImageError, ImageSettings

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that turn the photo by 90 degrees


def displayed_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a photo as displayed (after its EXIF orientation), from its header only;
    ImageError when it is not an image."""
    try:
        with Image.open(BytesIO(data)) as image:
            try:
                orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
            except Exception:  # a broken EXIF block: upright, as the crop treats it
                orientation = 1
            width, height = image.size
    except Exception as err:  # PIL signals bad data with many exception types
        raise ImageError(f"cannot read the image header: {err}") from None
    return (height, width) if orientation in _SWAPS_AXES else (width, height)


def crop_to_photo(
    xy: np.ndarray, canvas: int, photo_size: tuple[int, int], box: Box | None, settings: ImageSettings
) -> np.ndarray:
    """float64 (n, 2) photo positions of (n, 2) positions in a canvas x canvas crop of the photo.

    photo_size: (width, height) as displayed; box and settings (enlarge, resize_mode): those the crop was
    made with (settings.size is ignored: the canvas may be another size, e.g. the match size)."""
    (left, top, right, bottom), _ = crop_region(box, photo_size[0], photo_size[1], settings.enlarge)
    width, height = right - left, bottom - top
    points = np.asarray(xy, np.float64).reshape(-1, 2)
    if settings.resize_mode == "square":
        scale = np.array([width / canvas, height / canvas])
        return points * scale + [left, top]
    shrink = canvas / max(width, height)  # as photo_crop._resize fits the region into the canvas
    inner = np.array([max(1, round(width * shrink)), max(1, round(height * shrink))])
    offset = (canvas - inner) // 2
    return (points - offset) * (np.array([width, height]) / inner) + [left, top]


def aspect_crop_to_photo(
    xy: np.ndarray,
    frame: tuple[int, int],
    photo_size: tuple[int, int],
    box: Box | None,
    settings: ImageSettings,
) -> np.ndarray:
    """float64 (n, 2) photo positions of (n, 2) positions in a crop that kept the aspect ratio
    (photo_crop.process_image_keeping_aspect, the default match crop), frame (width, height) pixels: the
    enlarged box, clamped, scaled alike on both axes (up to the rounding of its sides)."""
    (left, top, right, bottom), _ = crop_region(box, photo_size[0], photo_size[1], settings.enlarge)
    scale = np.array([right - left, bottom - top], np.float64) / np.maximum(np.asarray(frame, np.float64), 1)
    return np.asarray(xy, np.float64).reshape(-1, 2) * scale + [left, top]
