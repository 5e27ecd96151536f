"""build-tfrecords worker side: one task per photo, processed by the crop contract (no TensorFlow)."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from tfrecords_builder.workers import spawn_pool
from tfwhale.imaging.crop_box import Box
from tfwhale.imaging.photo_crop import ImageError, ImageInfo, ImageSettings, process_image


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


def process_task(task: ImageTask, settings: ImageSettings) -> ImageResult:
    """Read (when given a local path) and process one image; refusals come back as `error`, never raise."""
    if task.error:
        return ImageResult(image=task.image, jpeg=None, info=None, error=task.error)
    try:
        data = task.source if isinstance(task.source, bytes) else _read_local(task.source)
        jpeg, info = process_image(data, task.box, settings)
    except ImageError as error:
        return ImageResult(image=task.image, jpeg=None, info=None, error=str(error))
    return ImageResult(image=task.image, jpeg=jpeg, info=info, error=None)


def process_chunk(tasks: list[ImageTask], settings: ImageSettings) -> list[ImageResult]:
    """The unit of work sent to a worker process: a few images, so that pickling overhead stays small."""
    return [process_task(task, settings) for task in tasks]


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
