"""Benchmark of build-tfrecords --runner beam: DirectRunner (multi_processing) against the local builder.

    python benchmarks/build_beam.py                  # 400 photos of 3000x2000 -> 768 px, Kaggle-like boxes
    python benchmarks/build_beam.py --n 100 --repeat 3
    python benchmarks/build_beam.py --marginal       # also the first 200: CPU per extra photo, start-up apart

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
import time
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
    wait_for_children()


def _children() -> list[int]:
    """This process's Beam SDK worker processes (running, or exited and not yet reaped), from /proc."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
            if parent == os.getpid() and (b"sdk_worker_main" in command or not command):  # zombies: empty
                pids.append(int(entry))
    return pids


def wait_for_children(timeout_s: float = 60.0) -> None:
    """Until Beam's SDK worker processes have exited and been reaped: only then does getrusage count their
    CPU (the pipeline can report done while a thread is still waiting on them)."""
    deadline = time.monotonic() + timeout_s
    while _children() and time.monotonic() < deadline:
        time.sleep(0.1)
    if left := _children():
        logging.warning(
            "child processes still running after %.0f s: %s (their CPU is not counted)", timeout_s, left
        )


def shard_digests(out: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(out.glob("*.tfrec"))}


def _best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return min(wall for wall, _ in runs), min(cpu for _, cpu in runs)


def run_builds(args: argparse.Namespace, n: int) -> tuple[list, list, bool]:
    """Alternated local and Beam builds of the first n photos: (local runs, Beam runs, byte-identical)."""
    csv_path = make_photos(Path(args.cache), n, args.boxes)
    local, beam = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            local.append(timed(builder_build, csv_path, Path(tmp) / "local", args.size, args.workers))
            beam.append(timed(beam_build, csv_path, Path(tmp) / "beam", args.size, args.workers))
        identical = shard_digests(Path(tmp) / "local") == shard_digests(Path(tmp) / "beam")
    return local, beam, identical


def report(n: int, local: list, beam: list) -> None:
    for name, runs in (("local builder", local), ("Beam DirectRunner", beam)):
        wall, cpu = _best(runs)
        walls = ", ".join(f"{w:.1f}" for w, _ in runs)
        print(
            f"  {n} photos, {name:<18}{n / wall:7.2f} images/s  ({wall:5.1f} s wall [{walls}], "
            f"{1000 * cpu / n:5.1f} CPU ms/image)"
        )
    (local_wall, local_cpu), (beam_wall, beam_cpu) = _best(local), _best(beam)
    print(f"  {n} photos, Beam / local: wall {beam_wall / local_wall:.2f}x, CPU {beam_cpu / local_cpu:.2f}x")


def report_marginal(half: int, n: int, runs: dict[int, tuple[list, list]]) -> None:
    """CPU per extra photo, (CPU at n - CPU at n/2) / (n - n/2): start-up costs (worker processes loading
    TensorFlow and Beam) cancel out, which a long Dataflow job pays once per worker, not per photo."""
    for side, name in ((0, "local builder"), (1, "Beam DirectRunner")):
        extra_ms = 1000 * (_best(runs[n][side])[1] - _best(runs[half][side])[1]) / (n - half)
        start_s = _best(runs[n][side])[1] - extra_ms * n / 1000
        hours = extra_ms / 1000 * 1e6 / 3600
        print(
            f"  {name:<18} {extra_ms:5.1f} CPU ms per extra photo, {start_s:5.1f} CPU s fixed; "
            f"1M photos: {hours:.1f} vCPU-hours"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400, help="number of photos (400)")
    parser.add_argument("--size", type=int, default=768, help="output size (768)")
    parser.add_argument("--boxes", choices=tuple(c for c in CASES if c != "both"), default="mixed")
    parser.add_argument("--workers", type=int, default=2, help="local workers and Beam workers (2)")
    parser.add_argument("--repeat", type=int, default=1, help="alternated runs of each; best shown (1)")
    parser.add_argument(
        "--marginal", action="store_true", help="also build the first n/2 photos: CPU per extra photo"
    )
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "tfwhale-build-speed"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    make_photos(Path(args.cache), args.n, args.boxes)  # before TensorFlow: the generator forks
    import apache_beam  # noqa: F401 - imported up front, like TensorFlow, so that neither side's timing has it
    import tensorflow  # noqa: F401

    from tfwhale.imaging import jpeg_region

    load_before = os.getloadavg()[0]
    sizes = (args.n // 2, args.n) if args.marginal else (args.n,)
    results = {n: run_builds(args, n) for n in sizes}
    print(
        f"\n{WIDTH}x{HEIGHT} photos -> {args.size} px, boxes: {args.boxes}, {args.workers} workers, "
        f"cpus: {os.cpu_count()}, region decode: {'on' if jpeg_region.available() else 'off'}, "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; shards byte-identical: "
        f"{all(identical for _, _, identical in results.values())}"
    )
    for n, (local, beam, _) in results.items():
        report(n, local, beam)
    if args.marginal:
        report_marginal(sizes[0], args.n, {n: (local, beam) for n, (local, beam, _) in results.items()})


if __name__ == "__main__":
    main()
