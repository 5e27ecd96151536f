"""Benchmark: time to make a day-one gallery (python -m tfwhale.gallery) of ~1,000 photos on this machine.

Real photos reused (--source: each photo linked under several copies of its individual until there
are --photos) or synthetic photos of realistic size (tfwhale.synthetic, --photo-size px, slow to
render), whole photos (no boxes), in ID/photo folders. The baseline, measured in the same run on the
same photos, is build-tfrecords alone at the same crop size: the gallery command runs it and then adds
the model, the embedding pass and the leave-one-out threshold, so the ratio says what the day-one part
costs on top of building the records.

    python3 dev.py bench dayone_gallery --source ../shared/data/nyala-dev   # 1,000 photos, 224 px crops
    python3 dev.py bench dayone_gallery --photos 300 --photo-size 512       # synthetic photos
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
    add("--source", help="ID/photo folders of real photos to reuse (default: synthetic photos)")
    add("--photo-size", type=int, default=800, help="synthetic photo size in pixels, without --source (800)")
    add("--size", type=int, default=224, help="crop size of the gallery (224)")
    add("--work", default="/tmp/tfwhale-dayone-bench", help="working folder (the photos are kept)")
    return parser.parse_args()


def photo_set(args: argparse.Namespace) -> str:
    """ID/photo folders with exactly --photos photos: the real photos of --source (e.g. the nyala photos,
    800 px) linked under several copies of each individual's folder until there are enough, so the
    photos have a real size and content; or, without --source, synthetic photos (slow to render)."""
    data = os.path.join(args.work, f"photos-{args.photos}")
    if os.path.isdir(data):
        return data
    sources = _source_photos(args)
    if len(sources) < args.photos // 10:
        raise SystemExit(f"too few photos to make {args.photos} from ({len(sources)})")
    for i in range(args.photos):
        individual, path = sources[i % len(sources)]
        folder = os.path.join(data, f"{individual}_copy{i // len(sources)}")
        os.makedirs(folder, exist_ok=True)
        os.symlink(os.path.abspath(path), os.path.join(folder, os.path.basename(path)))
    return data


def _source_photos(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.source:
        return [(individual, os.path.join(args.source, individual, name))
                for individual in sorted(os.listdir(args.source))
                for name in sorted(os.listdir(os.path.join(args.source, individual)))]  # fmt: skip
    from tfwhale.synthetic.dataset import generate

    source = os.path.join(args.work, f"synthetic-{args.photo_size}px")
    if not os.path.exists(os.path.join(source, "train.csv")):
        generate(source, individuals=max(4, args.photos // 3), image_size=args.photo_size, test_fraction=0.0,
                 new_fraction=0.0, min_photos=3, singletons=False, overwrite=True)  # fmt: skip
    with open(os.path.join(source, "train.csv")) as f:
        rows = list(csv.DictReader(f))
    return [(r["individual_id"], os.path.join(source, "train_images", r["image"])) for r in rows]


def _write_csv(data: str, path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "species", "individual_id"])
        for individual in sorted(os.listdir(data)):
            for name in sorted(os.listdir(os.path.join(data, individual))):
                writer.writerow([f"{individual}/{name}", "animal", individual])


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
    build_csv = os.path.join(args.work, "train.csv")  # what tfwhale.gallery writes for ID/photo folders
    _write_csv(data, build_csv)
    build = [sys.executable, "-m", "tfrecords_builder", "--train-csv", build_csv, "--train-images", data,
             "--no-test", "--out", records, "--size", str(args.size), "-q"]  # fmt: skip
    build_wall, build_cpu = timed(build, log)
    make = [sys.executable, "-m", "tfwhale.gallery", "--photos", data, "--out", gallery, "--size",
            str(args.size), "-q"]  # fmt: skip
    wall, cpu = timed(make, log)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    kind = f"photos of {args.source}" if args.source else f"synthetic photos at {args.photo_size} px"
    print(f"{args.photos} {kind}, {args.size} px crops, {cores} cores")
    print("| step | wall | CPU | photos/s (wall) |\n|---|--:|--:|--:|")
    print(f"| build-tfrecords alone (baseline) | {build_wall:.1f} s | {build_cpu:.1f} s | "
          f"{args.photos / build_wall:.1f} |")  # fmt: skip
    print(f"| python -m tfwhale.gallery (build + model + embed + threshold) | {wall:.1f} s | {cpu:.1f} s | "
          f"{args.photos / wall:.1f} |")  # fmt: skip
    print(f"ratio gallery / baseline: {wall / build_wall:.2f}x wall, {cpu / build_cpu:.2f}x CPU")


if __name__ == "__main__":
    main()
