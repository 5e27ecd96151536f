"""Crop contract, region decode: a crop decoded from just its window equals the crop from a full decode."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

import tfwhale.imaging.photo_crop as photo_crop
from tfwhale.imaging import jpeg_region
from tfwhale.imaging.photo_crop import ImageError, ImageSettings, process_image

needs_extension = pytest.mark.skipif(
    jpeg_region._jpeg_region is None,
    reason="the _jpeg_region extension is not built (libjpeg-turbo headers missing at install time)",
)

# A resize computed on the window instead of the whole image may round a pixel the other way.
TOLERANCE = 1


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients + shapes + noise: detail everywhere, so that a window off by a pixel shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x * 3 + y * 5) % 256], axis=-1).astype(float)
    pixels += rng.normal(0, 20, pixels.shape)
    pixels[height // 4 : height // 2, width // 3 : width // 2] = rng.integers(0, 255, 3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, orientation: int = 1, **options) -> bytes:
    buffer = BytesIO()
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    image.save(buffer, "JPEG", quality=options.pop("quality", 90), **options)
    return buffer.getvalue()


def pixels_of(data: bytes, box, settings: ImageSettings, monkeypatch, region: bool):
    """process_image's output before JPEG encoding (so the comparison is not blurred by quantisation)."""
    monkeypatch.setenv(jpeg_region.ENV_SWITCH, "1" if region else "0")
    monkeypatch.setattr(photo_crop, "encode_jpeg", lambda image, quality: _array(image).tobytes())
    raw, info = process_image(data, box, settings)
    return np.frombuffer(raw, np.uint8).reshape(settings.size, settings.size, 3).astype(int), info


def _array(image: Image.Image | jpeg_region.Window) -> np.ndarray:
    return np.asarray(image.image() if isinstance(image, jpeg_region.Window) else image)


class CountingDecoder:
    """Wraps the extension's decode to count the calls (the fast path must really be taken)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        self.inner = jpeg_region._jpeg_region.decode
        monkeypatch.setattr(jpeg_region._jpeg_region, "decode", self)

    def __call__(self, *args):
        self.calls += 1
        return self.inner(*args)


def assert_same_crop(data, box, settings, monkeypatch, expect_region: bool = True):
    counter = CountingDecoder(monkeypatch)
    fast, fast_info = pixels_of(data, box, settings, monkeypatch, region=True)
    assert counter.calls == (1 if expect_region else 0)
    slow, slow_info = pixels_of(data, box, settings, monkeypatch, region=False)
    assert counter.calls == (1 if expect_region else 0)
    assert fast_info == slow_info
    assert np.abs(fast - slow).max() <= TOLERANCE
    return fast_info


BOXES = {
    "middle": (120.0, 80.0, 260.0, 170.0),
    "top-left corner": (0.0, 0.0, 90.0, 60.0),
    "bottom-right corner": (250.0, 160.0, 317.0, 211.0),
    "past the right edge": (280.0, 20.0, 400.0, 120.0),
    "thin, left edge": (0.0, 5.0, 30.0, 206.0),
    "sub-pixel": (33.3, 47.7, 201.9, 150.2),
    "no box": None,
}


@needs_extension
@pytest.mark.parametrize("name", list(BOXES))
@pytest.mark.parametrize("size", [40, 96, 300])  # DCT scales 1 to 4 depending on the crop
@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
def test_region_crop_equals_full_decode_crop_odd_size(name, size, subsampling, monkeypatch):
    data = jpeg(photo(317, 211), subsampling=subsampling)
    assert_same_crop(data, BOXES[name], ImageSettings(size=size), monkeypatch)


@needs_extension
@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("box", [(10.0, 150.0, 120.0, 290.0), (0.0, 0.0, 60.0, 40.0), None])
def test_region_crop_keeps_the_box_in_display_orientation(orientation, box, monkeypatch):
    """Boxes are in the upright image: the window is mapped into the stored image, then turned."""
    data = jpeg(photo(301, 203, seed=orientation), orientation=orientation)
    info = assert_same_crop(data, box, ImageSettings(size=48), monkeypatch)
    swapped = orientation in (5, 6, 7, 8)
    assert (info.width, info.height) == ((203, 301) if swapped else (301, 203))


@needs_extension
@pytest.mark.parametrize("mode", ["square", "letterbox"])
def test_region_crop_with_dct_scaling_and_letterbox(mode, monkeypatch):
    data = jpeg(photo(1203, 805, seed=3))
    info = assert_same_crop(
        data, (100.0, 90.0, 1100.0, 700.0), ImageSettings(size=128, resize_mode=mode), monkeypatch
    )
    assert info.draft_scale == (4 if mode == "square" else 8)  # letterbox: only the long side counts


@needs_extension
def test_greyscale_jpeg_takes_the_region_path(monkeypatch):
    data = jpeg(photo(257, 190).convert("L"))
    assert_same_crop(data, (30.0, 20.0, 200.0, 150.0), ImageSettings(size=64), monkeypatch)


@needs_extension
@pytest.mark.parametrize(
    "make",
    [
        lambda: jpeg(photo(200, 150), progressive=True),
        lambda: jpeg(photo(200, 150).convert("CMYK")),
        lambda: _png(photo(200, 150)),
    ],
    ids=["progressive", "cmyk", "png"],
)
def test_other_images_are_decoded_whole_by_pil(make, monkeypatch):
    assert_same_crop(
        make(), (20.0, 10.0, 150.0, 120.0), ImageSettings(size=48), monkeypatch, expect_region=False
    )


def _png(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@needs_extension
def test_a_truncated_jpeg_is_rejected_even_when_the_window_lies_above_the_cut(monkeypatch):
    data = jpeg(photo(320, 240))
    truncated = data[: len(data) * 2 // 3]
    monkeypatch.setenv(jpeg_region.ENV_SWITCH, "1")
    with pytest.raises(ImageError):
        process_image(truncated, (0.0, 0.0, 60.0, 40.0), ImageSettings(size=32))


@needs_extension
def test_corrupt_data_inside_the_window_falls_back_to_pil(monkeypatch):
    """A libjpeg warning in the window sends the photo to PIL, which decides as it always did."""
    data = bytearray(jpeg(photo(320, 240)))
    start = data.index(b"\xff\xda") + 40  # a few bytes into the entropy-coded data
    data[start : start + 12] = b"\xff\xd0" * 6  # stray restart markers: libjpeg warns and resyncs
    counter = CountingDecoder(monkeypatch)
    monkeypatch.setenv(jpeg_region.ENV_SWITCH, "1")
    with_region = _outcome(bytes(data), monkeypatch)
    monkeypatch.setenv(jpeg_region.ENV_SWITCH, "0")
    assert _outcome(bytes(data), monkeypatch) == with_region
    assert counter.calls == 1


def _outcome(data: bytes, monkeypatch):
    try:
        return process_image(data, (0.0, 0.0, 100.0, 80.0), ImageSettings(size=32))
    except ImageError as error:
        return str(error)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stored_rect_maps_upright_pixels_to_the_stored_ones(orientation):
    stored = np.arange(7 * 5).reshape(5, 7).astype(np.int32)  # 7 wide, 5 high, every value unique
    upright = np.asarray(photo_crop.ImageOps.exif_transpose(_with_orientation(stored, orientation)))
    rect = (1, 2, 3, 4) if upright.shape[1] >= 3 else (0, 0, 1, 1)
    left, top, right, bottom = jpeg_region.stored_rect(rect, orientation, 7, 5)
    expected = set(upright[rect[1] : rect[3], rect[0] : rect[2]].ravel())
    assert set(stored[top:bottom, left:right].ravel()) == expected


def _with_orientation(pixels: np.ndarray, orientation: int) -> Image.Image:
    image = Image.fromarray(pixels, mode="I")
    image.getexif()[0x0112] = orientation
    return image


def test_switching_region_decode_off_uses_pil(monkeypatch):
    monkeypatch.setenv(jpeg_region.ENV_SWITCH, "0")
    assert not jpeg_region.available()


@needs_extension
@pytest.mark.parametrize(
    ("shape", "box", "size"),
    [
        ((211, 317, 3), (0.0, 0.0, 317.0, 211.0), (96, 96)),  # whole image, shrink
        ((211, 317, 3), (33.3, 47.7, 201.9, 150.2), (300, 300)),  # sub-pixel box, enlarge
        ((211, 317, 3), (250.0, 160.0, 317.0, 211.0), (40, 64)),  # at the bottom-right edge, mixed
        ((190, 257), (5.5, 0.0, 257.0, 189.5), (64, 48)),  # greyscale
        ((3, 5, 3), (0.0, 0.0, 5.0, 3.0), (7, 2)),  # tiny
    ],
)
def test_extension_resize_matches_pil_bilinear_within_a_level(shape, box, size):
    pixels = np.asarray(photo(shape[1], shape[0]).convert("RGB" if len(shape) == 3 else "L"))
    window = jpeg_region.Window(pixels.tobytes(), shape[1], shape[0], 3 if len(shape) == 3 else 1)
    ours = jpeg_region.resize(window, box, size, reducing_gap=3.0)
    theirs = Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    assert ours.size == theirs.size and ours.mode == theirs.mode
    assert np.abs(np.asarray(ours).astype(int) - np.asarray(theirs)).max() <= 1


@needs_extension
def test_extension_resize_leaves_pil_the_crops_it_would_first_reduce():
    window = jpeg_region.Window(bytes(700 * 10 * 3), 700, 10, 3)
    assert jpeg_region.resize(window, (0.0, 0.0, 700.0, 10.0), (100, 10), reducing_gap=3.0) is None  # 7x
    assert jpeg_region.resize(window, (0.0, 0.0, 500.0, 10.0), (100, 10), reducing_gap=3.0) is not None


@needs_extension
def test_extension_resize_refuses_a_box_outside_the_pixels():
    with pytest.raises(ValueError, match="box inside the image"):
        jpeg_region._jpeg_region.resize(bytes(30), 5, 2, 3, 0.0, 0.0, 6.0, 2.0, 3, 3)


@needs_extension
@pytest.mark.parametrize("size, quality", [(768, 90), (255, 75), (64, 95)])
def test_extension_encode_gives_the_bytes_pil_saves(size, quality):
    # Builds keep their bytes whichever encoder ran: the extension's settings must be PIL's exactly.
    pixels = photo(size, size, seed=size).tobytes()
    ours = jpeg_region.encode(jpeg_region.Window(pixels, size, size, 3), quality)
    buffer = BytesIO()
    Image.frombytes("RGB", (size, size), pixels).save(buffer, "JPEG", quality=quality)
    assert ours == buffer.getvalue()


@needs_extension
def test_region_path_encodes_with_the_extension(monkeypatch):
    calls = []
    inner = jpeg_region._jpeg_region.encode
    monkeypatch.setattr(jpeg_region._jpeg_region, "encode", lambda *args: calls.append(1) or inner(*args))
    out, _ = process_image(jpeg(photo(400, 300)), (50, 40, 300, 260), ImageSettings(size=96))
    assert calls and Image.open(BytesIO(out)).size == (96, 96)
