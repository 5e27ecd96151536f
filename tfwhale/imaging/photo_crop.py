"""The crop-and-resize contract shared by build-tfrecords and identify: photo bytes + box -> RGB JPEG."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from io import BytesIO
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from tfwhale.imaging import jpeg_region
from tfwhale.imaging.crop_box import Box, crop_region

RESIZE_MODES = ("square", "letterbox")


# Alpha is composited onto, and letterbox bars are filled with, mid grey: it reads as "no content" to a
# network trained on natural photos, where black or white would look like a strong edge.
NEUTRAL_GREY = (128, 128, 128)


DCT_SCALES = (8, 4, 2)


# Bump when the pixels this module produces change for the same settings: finished shards of an older
# version then no longer match the build plan and are not reused.
IMAGING_VERSION = 3  # 3: baseline JPEGs decoded from a window and resized by jpeg_region (within 1 level)


_EXIF_ORIENTATION = 0x0112


_SWAPS_AXES = {5, 6, 7, 8}


# PIL refuses (DecompressionBombError) images above twice its MAX_IMAGE_PIXELS, ~179 megapixels; the
# same default here, but as a setting (build-tfrecords --max-pixels) and with a message that says so.
DEFAULT_MAX_PIXELS = 2 * 89_478_485


class ImageError(ValueError):
    """One image that cannot be read or decoded; the writer turns it into a Reject, the build goes on."""


@dataclass(frozen=True)
class ImageSettings:
    """How every image of a build is cropped, resized and encoded."""

    size: int
    enlarge: float = 1.2
    resize_mode: str = "square"
    quality: int = 90
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger photos are refused before decoding (decompression bombs)

    def manifest_fields(self) -> dict[str, Any]:
        """The settings as the records' manifest stores them (its "crop" section; size is "image_size")."""
        return {
            "enlarge": self.enlarge,
            "resize_mode": self.resize_mode,
            "jpeg_quality": self.quality,
            "max_pixels": self.max_pixels,
        }

    @classmethod
    def from_manifest(cls, size: int, crop: Mapping[str, Any]) -> ImageSettings:
        """Read back what manifest_fields wrote (an older manifest without max_pixels: the default)."""
        return cls(
            size=int(size),
            enlarge=float(crop["enlarge"]),
            resize_mode=str(crop["resize_mode"]),
            quality=int(crop["jpeg_quality"]),
            max_pixels=int(crop.get("max_pixels") or DEFAULT_MAX_PIXELS),
        )


@dataclass(frozen=True)
class ImageInfo:
    """What happened to one image: its displayed size, the DCT scale used and any box fallback."""

    width: int
    height: int
    draft_scale: int
    no_box: bool
    fallback: str | None


def choose_draft_scale(crop_width: float, crop_height: float, size: int, resize_mode: str) -> int:
    """The largest JPEG DCT downscale (8, 4, 2 or 1) that leaves the crop at least `size` where it matters.

    A square stretch needs both crop sides >= size; a letterbox only the longer side (the shorter one is
    shrunk by the same factor, so it keeps enough pixels too). Decoding at 1/s skips most of the inverse-DCT
    and colour work (entropy decoding stays) and leaves s^2 times fewer pixels to resample.
    """
    needed = min(crop_width, crop_height) if resize_mode == "square" else max(crop_width, crop_height)
    for scale in DCT_SCALES:
        if needed / scale >= size:
            return scale
    return 1


def process_image(data: bytes, box: Box | None, settings: ImageSettings) -> tuple[bytes, ImageInfo]:
    """Decode, orient, crop to the enlarged box, convert to RGB, resize to size x size, encode as JPEG.

    Boxes are in the coordinates of the image as displayed, i.e. after its EXIF orientation is applied:
    the Kaggle Detic and YOLOv5 boxes were computed on images loaded with OpenCV, whose imread applies
    EXIF orientation. So the crop is computed in displayed coordinates and taken after the rotation.
    Raises ImageError for anything that is not a decodable image.
    """
    pixels, scaled_region, info = decode_crop(data, box, settings)
    output = _resize(pixels, scaled_region, settings)
    return encode_jpeg(output, settings.quality), info


def decode_crop(
    data: bytes, box: Box | None, settings: ImageSettings
) -> tuple[Image.Image | jpeg_region.Window, tuple[float, float, float, float], ImageInfo]:
    """The decoding half of process_image: upright pixels holding the crop, the crop box in them, the info.

    Decodes no more than the crop needs: the largest DCT scale that keeps it at `settings.size`, and for a
    baseline JPEG only the window around the crop (jpeg_region). benchmarks/build_speed.py times this alone
    as the floor of a build.
    """
    if settings.resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {settings.resize_mode!r}")
    image = _open(data, settings.max_pixels)
    width, height, orientation = _displayed_size(image)
    region, fallback = crop_region(box, width, height, settings.enlarge)
    left, top, right, bottom = region
    scale = choose_draft_scale(right - left, bottom - top, settings.size, settings.resize_mode)
    image, scaled_region, used_scale = _decode_for_crop(
        data, image, scale, orientation, region, settings.size
    )
    info = ImageInfo(width, height, draft_scale=used_scale, no_box=box is None, fallback=fallback)
    return image, scaled_region, info


def _decode_for_crop(
    data: bytes,
    image: Image.Image,
    scale: int,
    orientation: int,
    region: tuple[int, int, int, int],
    size: int,
) -> tuple[Image.Image | jpeg_region.Window, tuple[float, float, float, float], int]:
    """Upright decoded pixels holding the crop, the crop box in them, and the DCT scale used.

    A baseline JPEG is decoded only around the crop (jpeg_region); anything else in full by PIL.
    """
    left, top, right, bottom = region
    width, height = (image.height, image.width) if orientation in _SWAPS_AXES else image.size
    if jpeg_region.takes(image, data):
        # The size a full decode at 1/scale would have: ceil(original / scale), turned upright.
        stored_w, stored_h = (-(-side // scale) for side in image.size)
        ratio_x, ratio_y = (stored_h, stored_w) if orientation in _SWAPS_AXES else (stored_w, stored_h)
        ratio_x, ratio_y = ratio_x / width, ratio_y / height
        scaled = (left * ratio_x, top * ratio_y, right * ratio_x, bottom * ratio_y)
        window = jpeg_region.decode_crop(data, image.size, orientation, scaled, scale, size)
        if window is not None:
            return window[0], window[1], scale
    image = _decode(image, scale, orientation)
    # The decoded size is ceil(original / scale): scale the region by the exact ratio, not 1 / scale.
    ratio_x, ratio_y = image.width / width, image.height / height
    scaled_region = (left * ratio_x, top * ratio_y, right * ratio_x, bottom * ratio_y)
    # Only JPEG honours draft: report the scale the decoder actually used.
    return image, scaled_region, max(1, round(width / image.width))


@contextlib.contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """PIL's global decompression-bomb check off while this module applies its own (max_pixels)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _open(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    try:
        with _own_pixel_limit():
            image = Image.open(BytesIO(data))
    except UnidentifiedImageError as error:
        what = f"it starts with {data[:12]!r}" if data else "it is empty"
        raise ImageError(f"cannot decode image: not an image format PIL reads ({what})") from error
    except Exception as error:  # PIL signals bad data with many exception types
        raise ImageError(f"cannot decode image: {error}") from error
    if image.width < 1 or image.height < 1:
        raise ImageError(f"cannot decode image: empty image ({image.width}x{image.height})")
    if image.width * image.height > max_pixels:  # only the header is read so far: nothing decoded yet
        raise ImageError(
            f"image too large: {image.width}x{image.height} = {image.width * image.height:,} pixels, above "
            f"the limit of {max_pixels:,} (a guard against decompression bombs); raise it with --max-pixels"
        )
    return image


def _displayed_size(image: Image.Image) -> tuple[int, int, int]:
    """Width and height after EXIF orientation, and the orientation tag itself (1 = as stored)."""
    try:
        orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block should not cost the photo: treat it as upright
        orientation = 1
    if orientation in _SWAPS_AXES:
        return image.height, image.width, orientation
    return image.width, image.height, orientation


def _decode(image: Image.Image, scale: int, orientation: int) -> Image.Image:
    """Decode at 1/scale (JPEG only; other formats ignore draft) and apply the EXIF orientation."""
    if scale > 1:
        image.draft("RGB", (max(1, image.width // scale), max(1, image.height // scale)))
    try:
        image.load()
    except Exception as error:  # truncated or corrupt data surfaces here, with many exception types
        raise ImageError(f"cannot decode image: {error}") from error
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16-bit rescaled (not clipped), alpha put on grey, CMYK converted."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith(("I", "F")):
        return _high_depth_to_rgb(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*NEUTRAL_GREY, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit int / float) greyscale -> 8 bit; PIL's own convert would clip at 255."""
    import numpy as np  # only here: image workers start faster without it (a tenth of a second each)

    pixels = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or pixels.max(initial=0) > 255:
        pixels = pixels / 257.0
    grey = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


# PIL first reduces by an integer factor (a box filter) where the crop is over 2 x this times the output.
REDUCING_GAP = 3.0


def _resize(
    pixels: Image.Image | jpeg_region.Window,
    region: tuple[float, float, float, float],
    settings: ImageSettings,
) -> Image.Image | jpeg_region.Window:
    """Crop `region` and resize it in one resampling pass (PIL's box argument keeps subpixel accuracy).

    Bilinear: PIL's resize antialiases every filter, and after the DCT downscale the remaining factor is
    under 2, where bicubic looks no different to a CNN but costs 60% more (4 ms of ~36 ms an image).
    """
    size = settings.size
    if settings.resize_mode == "square":
        return _resize_to(pixels, region, (size, size))
    inner = aspect_size(region, size)
    content = _resize_to(pixels, region, inner)
    if isinstance(content, jpeg_region.Window):
        content = content.image()
    canvas = Image.new("RGB", (size, size), NEUTRAL_GREY)
    canvas.paste(content, ((size - inner[0]) // 2, (size - inner[1]) // 2))
    return canvas


def aspect_size(region: tuple[float, float, float, float], size: int) -> tuple[int, int]:
    """(width, height) of a crop region resized to `size` on its long side, its aspect ratio kept."""
    left, top, right, bottom = region
    shrink = size / max(right - left, bottom - top)
    return max(1, round((right - left) * shrink)), max(1, round((bottom - top) * shrink))


def process_image_keeping_aspect(
    data: bytes, box: Box | None, settings: ImageSettings
) -> tuple[bytes, ImageInfo]:
    """process_image's crop (same decode, orientation, enlarged box), resized to settings.size on its long
    side with its aspect ratio kept and no padding (settings.resize_mode is not used)."""
    pixels, region, info = decode_crop(data, box, replace(settings, resize_mode="letterbox"))
    return encode_jpeg(_resize_to(pixels, region, aspect_size(region, settings.size)), settings.quality), info


def _resize_to(
    pixels: Image.Image | jpeg_region.Window, region: tuple[float, float, float, float], size: tuple[int, int]
) -> Image.Image | jpeg_region.Window:
    """RGB, `size`: a decoded window goes through the extension's resize (PIL's filter, 4x faster) and stays
    raw RGB pixels, which encode_jpeg gives to the extension's encoder; anything else is a PIL image."""
    if isinstance(pixels, jpeg_region.Window):
        resized = jpeg_region.resize_window(pixels, region, size, REDUCING_GAP)
        if resized is not None:  # grey: the same per channel
            return resized if resized.components == 3 else resized.image().convert("RGB")
        pixels = pixels.image()
    try:
        rgb = to_rgb(pixels)
    except (ValueError, OSError) as error:
        raise ImageError(f"cannot convert image mode {pixels.mode} to RGB: {error}") from error
    return rgb.resize(size, Image.Resampling.BILINEAR, box=region, reducing_gap=REDUCING_GAP)


def encode_jpeg(image: Image.Image | jpeg_region.Window, quality: int) -> bytes:
    """JPEG bytes; raw RGB pixels (from the extension's resize) by the extension: PIL's bytes, faster."""
    if isinstance(image, jpeg_region.Window):
        return jpeg_region.encode(image, quality)
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
