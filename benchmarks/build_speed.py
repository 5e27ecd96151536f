"""Benchmark of stage 1: build-tfrecords vs a one-image-at-a-time loop like the public notebooks.

    python benchmarks/build_speed.py                  # 200 photos of 3000x2000 -> 768 px: whole and Detic
    python benchmarks/build_speed.py --boxes detic    # 1400x900 boxes on two thirds of the photos only
    python benchmarks/build_speed.py --boxes mixed    # box sizes spread like the Kaggle Detic/YOLOv5 boxes
    python benchmarks/build_speed.py --n 50 --size 512
    python benchmarks/build_speed.py --repeat 5       # on a busy machine: the best of 5 builder / floor runs

For each case, in the same run: the naive loop, build-tfrecords, and the decode floor: every worker process
(already started) doing nothing but photo_crop.decode_crop, i.e. decoding the part of each photo the crop
needs at the DCT scale it allows. The photos are generated once (noise + gradients + shapes, JPEG quality
90) and cached. Everything runs after TensorFlow is imported; the builder time includes starting its
worker processes, the floor's does not.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from io import BytesIO, StringIO
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WIDTH, HEIGHT = 3000, 2000
# Box sides as fractions of the photo, roughly the spread of the Kaggle Detic / YOLOv5 full-body boxes
# (median about 0.45 x 0.25 of a 3000 x 2000 photo; 30% of photos have no box).
BOX_WIDTHS = (0.15, 0.25, 0.45, 0.7, 0.95)
BOX_HEIGHTS = (0.08, 0.14, 0.25, 0.38, 0.55)
NO_BOX_SHARE = 0.3
# "detic": the case of the builder-speed issue, a 1400x900 box (1680x1080 crop) on two thirds of the photos.
DETIC_BOX, DETIC_SHARE = (1400, 900), 2 / 3
CASES = {"both": ("none", "detic"), "none": ("none",), "detic": ("detic",), "mixed": ("mixed",)}


def photo(seed: int) -> Image.Image:
    """A photo-like picture: sky/sea gradient, smooth large-scale variation, shapes, sensor noise."""
    import numpy as np  # not at the top: spawned builder workers re-import this script, as they would not
    from PIL import ImageDraw, ImageFilter  # the console script, and their start-up is part of the timing

    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, HEIGHT)[:, None, None]
    sky, sea = rng.uniform(120, 230, 3), rng.uniform(10, 90, 3)
    pixels = sky * (1 - rows) + sea * rows + np.zeros((1, WIDTH, 1))
    coarse = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).resize(
        (WIDTH, HEIGHT), Image.Resampling.BICUBIC
    )
    pixels += (np.asarray(coarse, np.float32) - 128) * 0.35
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        w, h = rng.integers(100, 1200), rng.integers(40, 500)
        draw.ellipse((x, y, x + w, y + h), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    image = image.filter(ImageFilter.GaussianBlur(2))
    noisy = np.asarray(image, np.float32) + rng.normal(0, 9, (HEIGHT, WIDTH, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def save_photo(path: Path, seed: int) -> None:
    tmp = path.with_suffix(".part")
    photo(seed).save(tmp, "JPEG", quality=90)
    tmp.rename(path)


def random_box(rng: np.random.Generator, boxes: str) -> str:
    if boxes == "none":
        return ""
    if boxes == "detic":
        if rng.random() >= DETIC_SHARE:
            return ""
        width, height = DETIC_BOX
        left, top = rng.integers(0, WIDTH - width + 1), rng.integers(0, HEIGHT - height + 1)
        return f"{left} {top} {left + width} {top + height}"
    if rng.random() < NO_BOX_SHARE:
        return ""
    width = WIDTH * rng.choice(BOX_WIDTHS) * rng.uniform(0.8, 1.05)
    height = HEIGHT * rng.choice(BOX_HEIGHTS) * rng.uniform(0.8, 1.2)
    left, top = rng.uniform(0, WIDTH - width), rng.uniform(0, HEIGHT - height)
    return f"{left:.0f} {top:.0f} {left + width:.0f} {top + height:.0f}"


def make_photos(cache: Path, n: int, boxes: str) -> Path:
    """cache/train_images/ with n photos (generated once, kept) and a train CSV for this run; returns it."""
    import numpy as np
    import pandas as pd  # not at the top: spawned builder workers re-import this script

    images = cache / "train_images"
    images.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(n) if not (images / f"p{i:04d}.jpg").exists()]
    if missing:
        logging.info("generating %d photos in %s (once; they are kept)", len(missing), images)
        with ProcessPoolExecutor() as pool:
            list(pool.map(save_photo, [images / f"p{i:04d}.jpg" for i in missing], missing))
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "image": [f"p{i:04d}.jpg" for i in range(n)],
            "species": ["humpback_whale"] * n,
            "individual_id": [f"w{i % 40}" for i in range(n)],
            "box": [random_box(rng, boxes) for _ in range(n)],
        }
    )
    csv_path = cache / f"train-{boxes}-{n}.csv"
    table.to_csv(csv_path, index=False)
    return csv_path


def naive_build(csv_path: Path, out: Path, size: int) -> int:
    """The notebook way: open, decode in full, crop the enlarged box, resize, encode, write, one by one."""
    import pandas as pd
    import tensorflow as tf

    from tfwhale.contracts import records
    from tfwhale.imaging.crop_box import crop_region, parse_box_text

    table = pd.read_csv(csv_path, keep_default_na=False)
    with tf.io.TFRecordWriter(str(out / "naive.tfrec")) as writer:
        for row in table.itertuples():
            image = Image.open(csv_path.parent / "train_images" / row.image).convert("RGB")
            region, _ = crop_region(parse_box_text(row.box), image.width, image.height, 1.2)
            resized = image.crop(region).resize((size, size))
            buffer = BytesIO()
            resized.save(buffer, "JPEG", quality=90)
            writer.write(
                records.encode_train_example(buffer.getvalue(), row.image, row.individual_id, 0, "", 0, 0)
            )
    return len(table)


def builder_build(csv_path: Path, out: Path, size: int, workers: int | None) -> None:
    from tfrecords_builder import cli

    images = csv_path.parent / "train_images"
    argv = ["--train-csv", str(csv_path), "--train-images", str(images), "--no-test", "--out", str(out)]
    argv += ["--size", str(size), "--overwrite", "-q"]
    with contextlib.redirect_stdout(StringIO()):  # the build's summary table is not the benchmark's
        code = cli.main([*argv, *(["--workers", str(workers)] if workers else [])])
    if code != cli.EXIT_OK:
        raise SystemExit(f"build-tfrecords failed with exit code {code}")


def timed(run, *args) -> tuple[float, float]:
    """Wall seconds and CPU seconds (this process + the worker processes it reaped) of run(*args)."""
    before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    start = time.perf_counter()
    run(*args)
    wall = time.perf_counter() - start
    after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before, strict=True))
    return wall, cpu


def decode_chunk(items: list[tuple[str, str]], size: int) -> float:
    """Floor work for one chunk: read each photo and decode what its crop needs; returns its CPU seconds."""
    from tfwhale.imaging.crop_box import parse_box_text
    from tfwhale.imaging.photo_crop import ImageSettings, decode_crop

    start = time.process_time()
    settings = ImageSettings(size=size)
    for path, box in items:
        decode_crop(Path(path).read_bytes(), parse_box_text(box), settings)
    return time.process_time() - start


def start_pool(workers: int) -> ProcessPoolExecutor:
    """The builder's own worker processes (same spawn, same initializer: allocator settings included),
    warmed up so that the floor excludes their start-up."""
    from tfrecords_builder.workers import spawn_pool

    pool = spawn_pool(workers)
    list(pool.map(decode_chunk, [[]] * workers, [0] * workers))
    return pool


def decode_floor(pool: ProcessPoolExecutor, csv_path: Path, size: int, cpu: list[float]) -> None:
    """All workers decoding; the CPU they spent is appended to `cpu` (getrusage sees no live children)."""
    import pandas as pd

    table = pd.read_csv(csv_path, keep_default_na=False)
    items = [
        (str(csv_path.parent / "train_images" / image), box)
        for image, box in zip(table.image, table.box, strict=True)
    ]
    chunks = [items[i : i + 4] for i in range(0, len(items), 4)]  # the builder's chunk size
    cpu.append(sum(pool.map(decode_chunk, chunks, [size] * len(chunks))))


def run_case(
    boxes: str, args: argparse.Namespace, pool: ProcessPoolExecutor
) -> dict[str, tuple[float, float]]:
    """Wall and CPU seconds of the naive loop, the builder and the decode floor, on one set of photos."""
    csv_path = make_photos(Path(args.cache), args.n, boxes)
    built, floors = [], []
    with tempfile.TemporaryDirectory() as tmp:
        naive = timed(naive_build, csv_path, Path(tmp), args.size)
        for _ in range(args.repeat):  # alternated, so that a burst of other work hits both sides alike
            built.append(timed(builder_build, csv_path, Path(tmp) / "built", args.size, args.workers))
            floor_cpu: list[float] = []
            floor_wall, _ = timed(decode_floor, pool, csv_path, args.size, floor_cpu)
            floors.append((floor_wall, floor_cpu[0]))
    if args.repeat > 1:
        ratios = sorted(100 * floor[0] / build[0] for build, floor in zip(built, floors, strict=True))
        shown = ", ".join(f"{ratio:.0f}%" for ratio in ratios)
        print(f"  boxes: {boxes}: each run's wall, % of the decode floor: {shown}")
    # the least disturbed of the repeats: the fastest wall, and the least CPU (other work inflates both)
    return {"naive loop": naive, "build-tfrecords": _best(built), "decode floor": _best(floors)}


def _best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return min(wall for wall, _ in runs), min(cpu for _, cpu in runs)


def report(boxes: str, args: argparse.Namespace, times: dict[str, tuple[float, float]]) -> None:
    """Wall ratios (what a user waits for) and CPU ratios (which move less when others share the cores)."""
    print(f"  boxes: {boxes}")
    for name, (wall, cpu) in times.items():
        rate, cpu_ms = args.n / wall, 1000 * cpu / args.n
        print(f"    {name:<16}{rate:7.2f} images/s  ({wall:5.1f} s wall, {cpu_ms:5.1f} CPU ms/image)")
    (naive, naive_cpu), (built, built_cpu), (floor, floor_cpu) = times.values()
    print(
        f"    build-tfrecords, wall: {naive / built:.2f}x the naive loop, {100 * floor / built:.0f}% of the "
        f"decode floor; CPU: {naive_cpu / built_cpu:.2f}x less than the naive loop, "
        f"{100 * floor_cpu / built_cpu:.0f}% of it decoding"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200, help="number of photos (200)")
    parser.add_argument("--size", type=int, default=768, help="output size (768)")
    parser.add_argument("--boxes", choices=tuple(CASES), default="both", help="cases to run (both)")
    parser.add_argument("--workers", type=int, help="builder worker processes (default: all CPUs)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="builder and floor runs, alternated; best of each shown",
    )
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "tfwhale-build-speed"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for boxes in CASES[args.boxes]:  # before TensorFlow: the generating pool forks
        make_photos(Path(args.cache), args.n, boxes)
    import tensorflow  # noqa: F401 - imported up front so neither side's timing includes it

    from tfrecords_builder.imaging import default_workers
    from tfwhale.imaging import jpeg_region

    workers = args.workers or default_workers()
    load_before = os.getloadavg()[0]
    with start_pool(workers) as pool:
        results = {boxes: run_case(boxes, args, pool) for boxes in CASES[args.boxes]}
    print(
        f"\n{args.n} photos {WIDTH}x{HEIGHT} -> {args.size} px, {workers} workers, cpus: {os.cpu_count()}, "
        f"region decode: {'on' if jpeg_region.available() else 'off'}, load average {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f} (other processes slow the builder most)"
    )
    for boxes, times in results.items():
        report(boxes, args, times)


if __name__ == "__main__":
    main()
