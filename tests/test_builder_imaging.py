"""build-tfrecords imaging: draft scaling, EXIF orientation, colour modes, crops, letterbox, bad data."""

import platform
import subprocess
import sys
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from tfrecords_builder import workers
from tfrecords_builder.imaging import ImageTask, process_task
from tfwhale.imaging.photo_crop import (
    NEUTRAL_GREY,
    ImageError,
    ImageSettings,
    choose_draft_scale,
    process_image,
)

SQUARE_64 = ImageSettings(size=64, enlarge=1.0)


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def decode(jpeg: bytes) -> np.ndarray:
    image = Image.open(BytesIO(jpeg))
    assert image.format == "JPEG" and image.mode == "RGB"
    return np.asarray(image).astype(int)


def left_red_right_blue(width: int = 120, height: int = 80) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)


def assert_colour(pixels: np.ndarray, colour, tolerance: int = 12) -> None:
    mean = pixels.reshape(-1, 3).mean(axis=0)
    assert np.abs(mean - np.array(colour)).max() <= tolerance, (mean, colour)


@pytest.mark.parametrize(
    ("crop", "size", "mode", "expected"),
    [
        ((3000, 2000), 768, "square", 2),  # 1000 >= 768, 500 < 768
        ((3000, 2000), 224, "square", 8),  # 250 >= 224
        ((3000, 2000), 256, "square", 4),  # 250 < 256 at 1/8, 500 at 1/4
        ((3000, 600), 768, "square", 1),  # the short side is already below size
        ((3000, 600), 768, "letterbox", 2),  # letterbox needs only the long side: 1500 >= 768
        ((6144, 6144), 768, "square", 8),  # exactly size at 1/8
        ((500, 400), 768, "square", 1),  # smaller than size: upscaled from full resolution
    ],
)
def test_choose_draft_scale_keeps_the_crop_at_least_size(crop, size, mode, expected):
    scale = choose_draft_scale(*crop, size, mode)
    assert scale == expected
    needed = min(crop) if mode == "square" else max(crop)
    assert scale == 1 or needed / scale >= size


def test_draft_decode_is_used_and_matches_a_full_decode():
    rng = np.random.default_rng(0)
    # Smooth content (gradients + blocks) so that a 1/2 DCT decode and a full decode should agree closely.
    y, x = np.mgrid[0:1200, 0:1600]
    pixels = np.stack([x * 255 // 1600, y * 255 // 1200, (x + y) * 255 // 2800], axis=-1).astype(np.uint8)
    pixels[300:700, 500:1100] = rng.integers(0, 255, 3)
    data = encode(Image.fromarray(pixels), quality=95)
    box = (400.0, 200.0, 1400.0, 900.0)  # 1000 x 700 crop: 1/2 keeps 500 x 350 >= 300
    jpeg, info = process_image(data, box, ImageSettings(size=300, enlarge=1.0))
    assert info.draft_scale == 2 and (info.width, info.height) == (1600, 1200)
    reference = Image.open(BytesIO(data)).convert("RGB").resize((300, 300), Image.Resampling.BICUBIC, box=box)
    difference = np.abs(decode(jpeg) - np.asarray(reference).astype(int))
    assert difference.mean() < 3.0


def test_exif_orientation_is_applied_before_cropping():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displayed = stored rotated 90 degrees clockwise
    data = encode(left_red_right_blue(120, 80), exif=exif.tobytes(), quality=95)
    jpeg, info = process_image(data, None, SQUARE_64)
    assert (info.width, info.height) == (80, 120)
    pixels = decode(jpeg)
    assert_colour(pixels[:28], (255, 0, 0))  # the stored left (red) is now on top
    assert_colour(pixels[36:], (0, 0, 255))
    # Boxes are in displayed coordinates: the lower half of the displayed 80 x 120 image is blue.
    jpeg, _ = process_image(data, (0, 64, 80, 120), SQUARE_64)
    assert_colour(decode(jpeg), (0, 0, 255))


def test_crop_to_a_box_keeps_what_is_inside():
    pixels = np.full((300, 400, 3), 200, np.uint8)
    pixels[100:180, 250:350] = (0, 160, 0)
    data = encode(Image.fromarray(pixels), quality=95)
    jpeg, info = process_image(data, (250, 100, 350, 180), SQUARE_64)
    assert info.fallback is None and not info.no_box
    assert_colour(decode(jpeg), (0, 160, 0))
    whole, _ = process_image(data, None, SQUARE_64)
    assert decode(whole)[..., 0].mean() > 150  # mostly the grey background when not cropped


def test_enlarge_grows_the_box_about_its_centre():
    pixels = np.full((200, 200, 3), 255, np.uint8)
    pixels[50:150, 50:150] = 0
    data = encode(Image.fromarray(pixels), "PNG")
    jpeg, _ = process_image(data, (50, 50, 150, 150), ImageSettings(size=60, enlarge=2.0))
    out = decode(jpeg)
    assert_colour(out[20:40, 20:40], (0, 0, 0))  # the box fills the middle half
    assert_colour(out[:10], (255, 255, 255))  # the doubled crop reaches the white border


@pytest.mark.parametrize(
    ("box", "reason"),
    [((500, 500, 600, 600), "box outside image"), ((10, 10, 10, 40), "box has zero area")],
)
def test_unusable_box_falls_back_to_the_whole_image(box, reason):
    data = encode(left_red_right_blue())
    jpeg, info = process_image(data, box, SQUARE_64)
    assert info.fallback == reason
    pixels = decode(jpeg)
    assert_colour(pixels[:, :28], (255, 0, 0))
    assert_colour(pixels[:, 36:], (0, 0, 255))


def test_letterbox_keeps_the_aspect_ratio():
    red = Image.new("RGB", (120, 60), (255, 0, 0))
    jpeg, _ = process_image(encode(red, "PNG"), None, ImageSettings(size=64, resize_mode="letterbox"))
    pixels = decode(jpeg)
    assert pixels.shape == (64, 64, 3)
    assert_colour(pixels[20:44], (255, 0, 0))  # content 64 x 32, rows 16..47
    assert_colour(pixels[:12], NEUTRAL_GREY)
    assert_colour(pixels[52:], NEUTRAL_GREY)


def _grey_16bit() -> bytes:
    pixels = np.full((40, 60), 65535, np.uint16)
    pixels[:, 30:] = 32896  # 128 * 257
    return encode(Image.fromarray(pixels), "PNG")


def _rgba_half_transparent() -> bytes:
    pixels = np.zeros((40, 60, 4), np.uint8)
    pixels[:, :30] = (255, 0, 0, 255)  # opaque red left; right fully transparent (black RGB underneath)
    return encode(Image.fromarray(pixels, "RGBA"), "PNG")


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (60, 40), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 30, 40))
    return encode(image, "PNG", transparency=0)


@pytest.mark.parametrize(
    ("make", "left", "right"),
    [
        (lambda: encode(Image.new("L", (60, 40), 90)), (90, 90, 90), (90, 90, 90)),
        (lambda: encode(Image.new("CMYK", (60, 40), (0, 255, 255, 0))), (255, 0, 0), (255, 0, 0)),
        (lambda: encode(Image.new("LA", (60, 40), (200, 255)), "PNG"), (200, 200, 200), (200, 200, 200)),
        (_rgba_half_transparent, (255, 0, 0), NEUTRAL_GREY),
        (_palette_with_transparency, (255, 0, 0), NEUTRAL_GREY),
        (_grey_16bit, (255, 255, 255), (128, 128, 128)),
    ],
    ids=["grey", "cmyk", "grey-alpha", "rgba", "palette", "16-bit"],
)
def test_every_colour_mode_becomes_the_right_rgb(make, left, right):
    jpeg, _ = process_image(make(), None, SQUARE_64)
    pixels = decode(jpeg)
    assert pixels.shape == (64, 64, 3)
    assert_colour(pixels[:, :26], left)
    assert_colour(pixels[:, 38:], right)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"image,species\nnot a picture\n", r"cannot decode image: .*starts with b'image,specie'"),
        (b"", "cannot decode image: .*it is empty"),
        (encode(left_red_right_blue(400, 300))[:600], "cannot decode image"),  # truncated JPEG
    ],
    ids=["text", "empty", "truncated"],
)
def test_bad_data_raises_image_error(data, message):
    with pytest.raises(ImageError, match=message):
        process_image(data, None, SQUARE_64)


def test_process_task_reports_instead_of_raising(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(encode(left_red_right_blue()))
    result = process_task(ImageTask("good.jpg", str(good), None), SQUARE_64)
    assert result.error is None and decode(result.jpeg).shape == (64, 64, 3)
    missing = process_task(ImageTask("gone.jpg", str(tmp_path / "gone.jpg"), None), SQUARE_64)
    assert missing.jpeg is None and missing.error.startswith("cannot read image file")
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    bad = process_task(ImageTask("text.jpg", str(text), None), SQUARE_64)
    assert bad.jpeg is None and bad.error.startswith("cannot decode image")
    unread = process_task(
        ImageTask("remote.jpg", b"", None, error="cannot read image file: denied"), SQUARE_64
    )
    assert unread.error == "cannot read image file: denied"


def test_same_input_gives_identical_bytes():
    data = encode(left_red_right_blue(300, 200))
    first, _ = process_image(data, (10, 20, 200, 180), ImageSettings(size=96))
    second, _ = process_image(data, (10, 20, 200, 180), ImageSettings(size=96))
    assert first == second


def test_worker_modules_do_not_load_tensorflow():
    # Spawned workers import imaging (and the console script imports cli): both must stay TensorFlow-free.
    code = (
        "import sys, tfrecords_builder.cli, tfrecords_builder.imaging, tfrecords_builder.__main__; "
        "print('tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)
def test_workers_keep_freed_memory_between_photos():
    # The allocator setting must take on glibc (else every photo faults ~10 MB back in); a worker can set
    # it again after the pool's initializer did.
    with workers.spawn_pool(1) as pool:
        assert pool.submit(workers.keep_freed_memory).result()


def test_the_build_starts_its_workers_before_tensorflow_loads(tmp_path):
    # Worker start-up is meant to overlap TensorFlow's import (seconds of CPU); the lock's imports load it.
    code = (
        "import sys; from tfrecords_builder import cli, imaging; seen = []; "
        "imaging.start_pool = lambda workers: seen.append('tensorflow' in sys.modules); "
        f"cli.main(['--data', {str(tmp_path / 'missing')!r}, '--out', {str(tmp_path / 'out')!r}, "
        "'--size', '32', '-q']); "
        "print(seen)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[False]"
