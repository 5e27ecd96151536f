"""build-tfrecords worker side: one task per photo, processed by the crop contract and, when asked, the
local-feature contract (tfwhale.matching.photo); no TensorFlow."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tfrecords_builder.workers import spawn_pool
from tfwhale.contracts.local_features import NO_FEATURES, LocalFeatures
from tfwhale.imaging.crop_box import Box
from tfwhale.imaging.photo_crop import ImageError, ImageInfo, ImageSettings, process_image

if TYPE_CHECKING:  # OpenCV loads only in builds that take local features
    from tfwhale.matching.features import SiftSettings

logger = logging.getLogger(__name__)
# A photo whose records crop worked but whose match-size crop did not (rare): it keeps its record, with
# no keypoints, so one bad photo never sinks the shard.


@dataclass(frozen=True)
class ImageTask:
    """One image to process: `source` is a local path (read in the worker) or the bytes themselves.

    `error` is set when the parent could not even read the bytes; the task then just reports it.
    """

    image: str
    source: str | bytes
    box: Box | None
    error: str | None = None


@dataclass(frozen=True)
class ImageResult:
    """A worker's answer: JPEG bytes and info, or the reason the image was refused."""

    image: str
    jpeg: bytes | None
    info: ImageInfo | None
    error: str | None
    features: LocalFeatures | None = None  # when the build takes local features


def take_features(data: bytes, box: Box | None, settings: ImageSettings, sift: SiftSettings) -> LocalFeatures:
    """The photo's local features by the query path's own function (its match-size crop -> SIFT), or
    none (logged) when that crop fails. Imported here: OpenCV loads only in builds that take features."""
    from tfwhale.matching.photo import photo_features

    try:
        return photo_features(data, box, settings, sift)
    except ImageError as error:
        logger.warning("no local features (%s)", error)
        return NO_FEATURES


def process_task(task: ImageTask, settings: ImageSettings, sift: SiftSettings | None = None) -> ImageResult:
    """Read (when given a local path) and process one image; refusals come back as `error`, never raise.
    sift: matching.features.SiftSettings when the build takes local features (None: it does not)."""
    if task.error:
        return ImageResult(image=task.image, jpeg=None, info=None, error=task.error)
    try:
        data = task.source if isinstance(task.source, bytes) else _read_local(task.source)
        jpeg, info = process_image(data, task.box, settings)
    except ImageError as error:
        return ImageResult(image=task.image, jpeg=None, info=None, error=str(error))
    features = None if sift is None else take_features(data, task.box, settings, sift)
    return ImageResult(image=task.image, jpeg=jpeg, info=info, error=None, features=features)


def process_chunk(
    tasks: list[ImageTask], settings: ImageSettings, sift: SiftSettings | None = None
) -> list[ImageResult]:
    """The unit of work sent to a worker process: a few images, so that pickling overhead stays small."""
    return [process_task(task, settings, sift) for task in tasks]


def features_task(task: ImageTask, settings: ImageSettings, sift: SiftSettings) -> ImageResult:
    """Local features only (build-tfrecords add-local-features: the records exist already); a photo that
    cannot be read comes back with `error` and no features."""
    if task.error:
        return ImageResult(image=task.image, jpeg=None, info=None, error=task.error)
    try:
        data = task.source if isinstance(task.source, bytes) else _read_local(task.source)
    except ImageError as error:
        return ImageResult(image=task.image, jpeg=None, info=None, error=str(error))
    features = take_features(data, task.box, settings, sift)
    return ImageResult(image=task.image, jpeg=None, info=None, error=None, features=features)


def features_chunk(tasks: list[ImageTask], settings: ImageSettings, sift: SiftSettings) -> list[ImageResult]:
    return [features_task(task, settings, sift) for task in tasks]


def _read_local(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise ImageError(f"cannot read image file: {error.strerror or error}") from error


def default_workers() -> int:
    """The CPUs this process may run on (its affinity mask, which may be fewer than the host has)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def start_pool(workers: int) -> ProcessPoolExecutor | None:
    """Spawn the image workers now (None for one worker: images are then processed in the parent).

    Called before the parent imports TensorFlow and reads the tables: a spawned worker needs a few hundred
    ms of CPU to start (Python, PIL), which then overlaps that work instead of delaying the first image.
    Spawned, never forked: the parent is about to load TensorFlow, whose threads do not survive a fork.
    """
    if workers <= 1:
        return None
    pool = spawn_pool(workers)  # its workers exit when the build process dies
    for _ in range(workers):  # one submit per worker: the executor starts a process for each while none idles
        pool.submit(_started)
    return pool


def _started() -> None:
    """A worker's first task: nothing, since importing this module in the worker is the start-up."""
