"""Crop contract, fast path: decode only the part of a baseline JPEG that a crop needs (libjpeg-turbo).

A detector box covers a fraction of a photo, and a full decode spends most of its time on pixels the crop
throws away. The `_jpeg_region` extension decodes just a window of rows and columns at the DCT scale
photo_crop chose; rows above the window are only entropy-decoded, rows below are never read. The window is
taken with a margin wide enough for the resize filter, so the crop comes out as from a full decode (the
decoded pixels are the ones PIL's decoder gives: same library, same IDCT and upsampling).

Anything the extension does not take (PNG, CMYK, progressive, a corrupt stream, no extension built, or
TFWHALE_REGION_DECODE=0) returns None here, and photo_crop decodes the whole photo with PIL as before.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from PIL import Image

try:
    from tfwhale.imaging import _jpeg_region
except ImportError:  # built at install time only where libjpeg-turbo's headers were found
    _jpeg_region = None

logger = logging.getLogger(__name__)

if _jpeg_region is not None and not hasattr(_jpeg_region, "encode"):
    # an extension built by an older version (an editable install not rebuilt): PIL does it all
    logger.warning("the _jpeg_region extension is out of date (pip install -e . rebuilds it); using PIL")
    _jpeg_region = None

ENV_SWITCH = "TFWHALE_REGION_DECODE"

# The resize reads up to support x shrink pixels outside the crop box (bilinear support 1): twice that,
# plus a little, keeps every pixel the resize touches inside the window.
_EXTRA_MARGIN = 2

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

Rect = tuple[int, int, int, int]  # left, top, right, bottom; half-open, in pixels


@dataclass(frozen=True)
class Window:
    """Decoded pixels of a window of a photo, upright: row-major, 3 bytes (RGB) or 1 (greyscale) a pixel."""

    pixels: bytes
    width: int
    height: int
    components: int

    @property
    def mode(self) -> str:
        return "RGB" if self.components == 3 else "L"

    def image(self) -> Image.Image:
        return Image.frombuffer(self.mode, (self.width, self.height), self.pixels, "raw", self.mode, 0, 1)


def available() -> bool:
    """Whether region decoding is on: the extension was built and TFWHALE_REGION_DECODE is not 0."""
    return _jpeg_region is not None and os.environ.get(ENV_SWITCH, "1") != "0"


def takes(image: Image.Image, data: bytes) -> bool:
    """A baseline 8-bit YCbCr/RGB/greyscale JPEG that ends in its EOI marker (truncated files go to PIL,
    which rejects them: a window above the cut would otherwise decode, and the reject lists would differ)."""
    return (
        available()
        and image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and not image.info.get("progressive")
        and data.rstrip(b"\0").endswith(b"\xff\xd9")
    )


def decode_crop(
    data: bytes,
    stored_size: tuple[int, int],
    orientation: int,
    scaled_box: tuple[float, float, float, float],
    scale: int,
    out_size: int,
) -> tuple[Window, tuple[float, float, float, float]] | None:
    """The window of the photo decoded at 1/scale around `scaled_box`, upright, and the box inside it.

    `scaled_box` is in the coordinates of the whole photo decoded at 1/scale and turned upright (EXIF), as
    photo_crop computes it for a full decode. None when the extension refuses the stream.
    """
    stored_w, stored_h = (-(-side // scale) for side in stored_size)
    upright_w, upright_h = (stored_h, stored_w) if orientation in (5, 6, 7, 8) else (stored_w, stored_h)
    window = _window(scaled_box, upright_w, upright_h, out_size)
    stored = stored_rect(window, orientation, stored_w, stored_h)
    try:
        pixels, components = _jpeg_region.decode(data, scale, *stored)
    except ValueError as error:  # anything libjpeg objects to: PIL decodes the whole photo instead
        logger.debug("region decode refused (%s): decoding the whole photo", error)
        return None
    decoded = Window(pixels, stored[2] - stored[0], stored[3] - stored[1], components)
    if orientation in _TRANSPOSE:  # rare: turned by PIL, then back to plain bytes for resize()
        upright = decoded.image().transpose(_TRANSPOSE[orientation])
        decoded = Window(upright.tobytes(), upright.width, upright.height, components)
    left, top, right, bottom = scaled_box
    return decoded, (left - window[0], top - window[1], right - window[0], bottom - window[1])


def resize(
    window: Window, box: tuple[float, float, float, float], size: tuple[int, int], reducing_gap: float
) -> Image.Image | None:
    """PIL's Image.resize(size, BILINEAR, box, reducing_gap) of the window, by the extension (4x faster).

    None where PIL would first reduce by an integer factor (a crop over 2 x reducing_gap times the output):
    the caller then resizes with PIL, so that the result stays within a level of PIL's.
    """
    resized = resize_window(window, box, size, reducing_gap)
    return None if resized is None else Image.frombytes(resized.mode, size, resized.pixels)


def resize_window(
    window: Window, box: tuple[float, float, float, float], size: tuple[int, int], reducing_gap: float
) -> Window | None:
    """resize() as raw pixels: what encode() takes without a PIL image in between."""
    width, height = box[2] - box[0], box[3] - box[1]
    if int(width / size[0] / reducing_gap) > 1 or int(height / size[1] / reducing_gap) > 1:
        return None
    pixels = _jpeg_region.resize(window.pixels, window.width, window.height, window.components, *box, *size)
    return Window(pixels, size[0], size[1], window.components)


def encode(window: Window, quality: int) -> bytes:
    """RGB pixels as JPEG: the bytes PIL's save(quality=quality) gives (same libjpeg-turbo settings), without
    PIL's unpacking into its own image and packing back (0.5 of 1.9 ms at 768 px)."""
    if window.components != 3:
        raise ValueError(f"encode takes RGB pixels, not {window.components} component(s)")
    return _jpeg_region.encode(window.pixels, window.width, window.height, quality)


def _window(box: tuple[float, float, float, float], width: int, height: int, out_size: int) -> Rect:
    """Integer pixels around `box`, wide enough for the resize filter, clamped to the image."""
    left, top, right, bottom = box
    shrink = max((right - left) / out_size, (bottom - top) / out_size, 1.0)
    margin = 2 * math.ceil(shrink) + _EXTRA_MARGIN
    return (
        max(0, math.floor(left) - margin),
        max(0, math.floor(top) - margin),
        min(width, math.ceil(right) + margin),
        min(height, math.ceil(bottom) + margin),
    )


def stored_rect(rect: Rect, orientation: int, stored_w: int, stored_h: int) -> Rect:
    """A rectangle of the upright image as the same pixels in the image as stored (before EXIF rotation)."""
    left, top, right, bottom = rect
    if orientation == 2:
        return stored_w - right, top, stored_w - left, bottom
    if orientation == 3:
        return stored_w - right, stored_h - bottom, stored_w - left, stored_h - top
    if orientation == 4:
        return left, stored_h - bottom, right, stored_h - top
    if orientation == 5:
        return top, left, bottom, right
    if orientation == 6:
        return top, stored_h - right, bottom, stored_h - left
    if orientation == 7:
        return stored_w - bottom, stored_h - right, stored_w - top, stored_h - left
    if orientation == 8:
        return stored_w - bottom, left, stored_w - top, right
    return rect
