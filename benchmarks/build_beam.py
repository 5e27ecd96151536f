"""Benchmark of build-tfrecords --runner beam: DirectRunner (multi_processing) against the local builder.

    python benchmarks/build_beam.py                  # 400 photos of 3000x2000 -> 768 px, Kaggle-like boxes
    python benchmarks/build_beam.py --n 100 --repeat 3
    python benchmarks/build_beam.py --beam-workers 4

The same photos as benchmarks/build_speed.py (generated once, cached), built in the same run by the local
builder (--workers W) and by Beam's DirectRunner with W worker processes; the runs alternate, and the two
builds' shards are checked to be byte-identical. CPU time counts this process and its reaped children
(the builder's pool, Beam's SDK worker processes): per photo, it is what a Dataflow worker would spend,
and what the README's worker-hours estimate extrapolates.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import tempfile
from io import StringIO
from pathlib import Path

from build_speed import CASES, HEIGHT, WIDTH, builder_build, make_photos, timed

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def beam_build(csv_path: Path, out: Path, size: int, workers: int) -> None:
    from tfrecords_builder import cli

    images = csv_path.parent / "train_images"
    options = f"--runner=DirectRunner --direct_num_workers={workers} --direct_running_mode=multi_processing"
    argv = ["--train-csv", str(csv_path), "--train-images", str(images), "--no-test", "--out", str(out)]
    argv += ["--size", str(size), "--overwrite", "-q", "--runner", "beam", "--beam-options", options]
    with contextlib.redirect_stdout(StringIO()):
        code = cli.main(argv)
    if code != cli.EXIT_OK:
        raise SystemExit(f"build-tfrecords --runner beam failed with exit code {code}")


def shard_digests(out: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(out.glob("*.tfrec"))}


def _best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return min(wall for wall, _ in runs), min(cpu for _, cpu in runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400, help="number of photos (400)")
    parser.add_argument("--size", type=int, default=768, help="output size (768)")
    parser.add_argument("--boxes", choices=tuple(c for c in CASES if c != "both"), default="mixed")
    parser.add_argument("--workers", type=int, default=2, help="local workers and Beam workers (2)")
    parser.add_argument("--repeat", type=int, default=1, help="alternated runs of each; best shown (1)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "tfwhale-build-speed"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    csv_path = make_photos(Path(args.cache), args.n, args.boxes)  # before TensorFlow: the generator forks
    import apache_beam  # noqa: F401 - imported up front, like TensorFlow, so that neither side's timing has it
    import tensorflow  # noqa: F401

    from tfwhale.contracts import jpeg_region

    load_before = os.getloadavg()[0]
    local, beam = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            local.append(timed(builder_build, csv_path, Path(tmp) / "local", args.size, args.workers))
            beam.append(timed(beam_build, csv_path, Path(tmp) / "beam", args.size, args.workers))
        identical = shard_digests(Path(tmp) / "local") == shard_digests(Path(tmp) / "beam")
    print(
        f"\n{args.n} photos {WIDTH}x{HEIGHT} -> {args.size} px, boxes: {args.boxes}, {args.workers} workers, "
        f"cpus: {os.cpu_count()}, region decode: {'on' if jpeg_region.available() else 'off'}, "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; shards byte-identical: {identical}"
    )
    for name, runs in (("local builder", local), ("Beam DirectRunner", beam)):
        wall, cpu = _best(runs)
        walls = ", ".join(f"{w:.1f}" for w, _ in runs)
        print(
            f"  {name:<18}{args.n / wall:7.2f} images/s  ({wall:5.1f} s wall [{walls}], "
            f"{1000 * cpu / args.n:5.1f} CPU ms/image)"
        )
    (local_wall, local_cpu), (beam_wall, beam_cpu) = _best(local), _best(beam)
    print(
        f"  Beam / local: wall {beam_wall / local_wall:.2f}x, CPU {beam_cpu / local_cpu:.2f}x; "
        f"1M photos at Beam's CPU per photo: {beam_cpu / args.n * 1e6 / 3600:.0f} vCPU-hours"
    )


if __name__ == "__main__":
    main()
