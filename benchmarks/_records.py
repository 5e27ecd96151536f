"""Helper of the train-stage benchmarks: a cached records build of synthetic photos; load and CPU probes.

The photos come from `python -m tfwhale.synthetic` (textured water, sky and animals at PHOTO_SIZE px) and go
through the real `build-tfrecords` (box crop, resize, JPEG quality 90), so the records hold photo-like JPEGs
whose decode cost is close to real crops'. Both steps run as subprocesses (the builder's worker processes
would otherwise re-import the benchmark script) and are done once per setting: the folders are kept.
"""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass

DEFAULT_CACHE = os.path.join(tempfile.gettempdir(), "tfwhale-bench")
PHOTO_SIZE = 1024  # long side of the synthetic photos; their box crops are resized to the records' size

logger = logging.getLogger(__name__)


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise SystemExit(f"{what} failed (exit code {done.returncode}):\n{tail}")


def synthetic_photos(cache: str, individuals: int, seed: int = 0) -> str:
    """A Kaggle-layout folder of synthetic photos (train.csv, train_images/, boxes.csv), made once."""
    folder = os.path.join(cache, f"photos-{individuals}ids-{PHOTO_SIZE}px-seed{seed}")
    if not os.path.exists(os.path.join(folder, "train.csv")):  # train.csv is written last
        logger.info("generating synthetic photos of %d individuals in %s (once; kept)", individuals, folder)
        argv = ["-m", "tfwhale.synthetic", folder, "--individuals", str(individuals), "--seed", str(seed)]
        _run([*argv, "--image-size", str(PHOTO_SIZE), "--no-progress", "--overwrite"], "tfwhale.synthetic")
    return folder


def bench_records(cache: str, size: int, individuals: int = 50, seed: int = 0) -> str:
    """A finished build of `size` px records (5 folds, train only) from the synthetic photos; its folder."""
    photos = synthetic_photos(cache, individuals, seed)
    out = os.path.join(cache, f"records-{individuals}ids-{size}px-seed{seed}")
    if not os.path.exists(os.path.join(out, "manifest.json")):  # the manifest is written last
        logger.info("building %d px records in %s (once; kept)", size, out)
        argv = ["-m", "tfrecords_builder", "--data", photos, "--boxes", os.path.join(photos, "boxes.csv")]
        argv += ["--no-test", "--out", out, "--size", str(size), "--folds", "5", "--overwrite", "-q"]
        _run(argv, "build-tfrecords")
    return out


@dataclass(frozen=True)
class Timing:
    """Images handled in `wall` seconds, using `cpu` CPU-seconds of this process (all threads)."""

    images: int
    wall: float
    cpu: float

    @property
    def per_second(self) -> float:
        return self.images / self.wall

    @property
    def per_cpu_second(self) -> float:
        return self.images / self.cpu


def add_record_options(add) -> None:
    """The options every benchmark over synthetic records takes (`add` = parser.add_argument)."""
    add("--individuals", type=int, default=50, help="synthetic individuals (50: 85 train photos)")
    add("--cache", default=DEFAULT_CACHE, help="where photos and records are kept between runs")


def cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads together."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"
