"""Benchmark: what local features cost in build-tfrecords, against the same build without them, in one run.

    python3 benchmarks/local_features_cost.py                         # nyala-dev, 224 px records, 2 workers
    python3 benchmarks/local_features_cost.py --photos ../shared/data/lion --repeat 3

The photo folder (ID/photo) becomes a train.csv; the same build-tfrecords command then runs with
--no-local-features and with --local-features (alternating, --repeat times, each into a fresh folder, the
best time of each kept), and once more as add-local-features on the build without them. Printed: seconds a
photo of each, the ratios against the build without features, the feature bytes a photo from the
manifest, and the extrapolation of those bytes to Happywhale's 79,000 photos (51,033 train + 27,956 test).
Each build is its own process (as a user runs it), so worker start-up is included in every time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PHOTOS = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "nyala-dev"))
HAPPYWHALE_PHOTOS = 51_033 + 27_956


def write_csv(photos: str, work: str, limit: int | None) -> tuple[str, int]:
    """train.csv (image, species, individual_id) over ID/photo files, image names relative to `photos`."""
    rows = []
    for individual in sorted(os.listdir(photos)):
        folder = os.path.join(photos, individual)
        if os.path.isdir(folder):
            rows += [(f"{individual}/{name}", individual) for name in sorted(os.listdir(folder))]
    rows = rows[:limit] if limit else rows
    path = os.path.join(work, "train.csv")
    with open(path, "w") as f:
        f.write("image,species,individual_id\n")
        f.writelines(f"{image},animal,{individual}\n" for image, individual in rows)
    return path, len(rows)


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode not in (0, 3):
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", default=DEFAULT_PHOTOS, help="ID/photo folder (../shared/data/nyala-dev)")
    parser.add_argument("--size", type=int, default=224, help="records' image size (224)")
    parser.add_argument("--workers", type=int, default=2, help="build workers (2)")
    parser.add_argument("--repeat", type=int, default=2, help="builds of each kind; the best is kept (2)")
    parser.add_argument("--limit", type=int, help="only the first N photos")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="tfwhale-features-cost-")
    csv, n_photos = write_csv(args.photos, work, args.limit)
    builder = [sys.executable, "-m", "tfrecords_builder", "--train-csv", csv, "--train-images", args.photos,
               "--no-test", "--size", str(args.size), "--workers", str(args.workers), "-q"]  # fmt: skip
    times: dict[str, list[float]] = {"without": [], "with": []}
    for attempt in range(args.repeat):
        for kind, flag in (("without", "--no-local-features"), ("with", "--local-features")):
            out = os.path.join(work, f"{kind}{attempt}")
            times[kind].append(timed([*builder, flag, "--out", out]))
    plain = os.path.join(work, "without0")
    added = timed([sys.executable, "-m", "tfrecords_builder", "add-local-features", "--out", plain,
                   "--workers", str(args.workers), "-q"])  # fmt: skip
    with open(os.path.join(work, "with0", "manifest.json")) as f:
        section = json.load(f)["local_features"]
    with open(os.path.join(work, "without0", "manifest.json")) as f:
        records_bytes = sum(s["bytes"] for s in json.load(f)["shards"])
    base, full = min(times["without"]), min(times["with"])
    print(f"{n_photos} photos from {args.photos}, {args.size} px records, {args.workers} workers, "
          f"best of {args.repeat}; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'':34}{'s':>8}{'s/photo':>10}{'ratio':>8}")
    for title, seconds in (("build --no-local-features", base), ("build --local-features", full),
                           ("add-local-features afterwards", added)):  # fmt: skip
        print(f"{title:34}{seconds:8.1f}{seconds / n_photos:10.4f}{seconds / base:8.2f}")
    per_photo = section["bytes_per_photo"]
    print(f"feature bytes a photo: {per_photo:,} ({section['keypoints'] / section['photos']:.0f} keypoints); "
          f"records {records_bytes / n_photos:,.0f} bytes a photo at {args.size} px")  # fmt: skip
    features_gib, records_gib = (b * HAPPYWHALE_PHOTOS / 2**30 for b in (per_photo, records_bytes / n_photos))
    print(
        f"Happywhale's {HAPPYWHALE_PHOTOS:,} photos: {features_gib:.2f} GiB of features beside "
        f"{records_gib:.2f} GiB of records"
    )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
