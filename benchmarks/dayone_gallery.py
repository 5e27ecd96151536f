"""Benchmark: time to make a day-one gallery (python -m tfwhale.gallery) of ~1,000 photos on this machine.

Synthetic photos of realistic size (tfwhale.synthetic, --photo-size px, whole photos: no boxes) in the
Kaggle layout. The baseline, measured in the same run on the same photos, is build-tfrecords alone at the
same crop size: the gallery command runs it and then adds the model, the embedding pass and the
leave-one-out threshold, so the ratio says what the day-one part costs on top of building the records.

    python3 dev.py bench dayone_gallery                      # 1,000 photos at 800 px, 224 px crops
    python3 dev.py bench dayone_gallery --photos 300 --photo-size 512
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import subprocess
import sys
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--photos", type=int, default=1000, help="training photos in the gallery (1000)")
    add("--photo-size", type=int, default=800, help="synthetic photo size in pixels (800)")
    add("--size", type=int, default=224, help="crop size of the gallery (224)")
    add("--work", default="/tmp/tfwhale-dayone-bench", help="working folder (the photos are kept)")
    return parser.parse_args()


def photo_set(args: argparse.Namespace) -> str:
    """A Kaggle-layout folder with exactly --photos training photos (generated once, then reused)."""
    from tfwhale.synthetic.dataset import generate

    source = os.path.join(args.work, f"synthetic-{args.photo_size}px")
    if not os.path.exists(os.path.join(source, "train.csv")):
        individuals = max(4, args.photos // 3)
        generate(source, individuals=individuals, image_size=args.photo_size, test_fraction=0.0,
                 new_fraction=0.0, min_photos=3, singletons=False, overwrite=True)  # fmt: skip
    with open(os.path.join(source, "train.csv")) as f:
        rows = list(csv.DictReader(f))
    if len(rows) < args.photos:
        raise SystemExit(
            f"{source} holds {len(rows)} photos, fewer than {args.photos}; delete it to regenerate"
        )
    data = os.path.join(args.work, f"photos-{args.photos}-{args.photo_size}px")
    os.makedirs(data, exist_ok=True)
    if not os.path.lexists(os.path.join(data, "train_images")):
        os.symlink(os.path.join(source, "train_images"), os.path.join(data, "train_images"))
    with open(os.path.join(data, "train.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "species", "individual_id"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows[: args.photos])
    return data


def timed(command: list[str], log: str) -> tuple[float, float]:
    """(wall s, CPU s of the command and its children)."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with open(log, "a") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code not in (0, 3):
        raise SystemExit(f"{command[:3]} failed (exit {code}); see {log}")
    return time.perf_counter() - start, (after.ru_utime - before.ru_utime) + (
        after.ru_stime - before.ru_stime
    )


def main() -> None:
    args = parse_args()
    data = photo_set(args)
    log = os.path.join(args.work, "bench.log")
    records, gallery = os.path.join(args.work, "records-baseline"), os.path.join(args.work, "gallery")
    for folder in (records, gallery):
        shutil.rmtree(folder, ignore_errors=True)
    build = [sys.executable, "-m", "tfrecords_builder", "--data", data, "--no-test", "--out", records,
             "--size", str(args.size), "-q"]  # fmt: skip
    build_wall, build_cpu = timed(build, log)
    make = [sys.executable, "-m", "tfwhale.gallery", "--photos", data, "--out", gallery, "--size",
            str(args.size), "-q"]  # fmt: skip
    wall, cpu = timed(make, log)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.photos} synthetic photos at {args.photo_size} px, {args.size} px crops, {cores} cores")
    print("| step | wall | CPU | photos/s (wall) |\n|---|--:|--:|--:|")
    print(f"| build-tfrecords alone (baseline) | {build_wall:.1f} s | {build_cpu:.1f} s | "
          f"{args.photos / build_wall:.1f} |")  # fmt: skip
    print(f"| python -m tfwhale.gallery (build + model + embed + threshold) | {wall:.1f} s | {cpu:.1f} s | "
          f"{args.photos / wall:.1f} |")  # fmt: skip
    print(f"ratio gallery / baseline: {wall / build_wall:.2f}x wall, {cpu / build_cpu:.2f}x CPU")


if __name__ == "__main__":
    main()
