"""build-tfrecords writing: images through worker processes into atomic shards, past those resume.py kept."""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import tensorflow as tf
from tqdm import tqdm

from tfrecords_builder.errors import Reject
from tfrecords_builder.imaging import (
    ImageResult,
    ImageTask,
    process_chunk,
    start_pool,
)
from tfrecords_builder.local_features import write_features
from tfrecords_builder.plan import PlanItem, PlannedShard
from tfrecords_builder.resume import ShardRecord, parts_path
from tfwhale.contracts import records
from tfwhale.contracts.local_features import LocalFeatures
from tfwhale.core import files
from tfwhale.imaging.photo_crop import ImageSettings
from tfwhale.matching.features import SiftSettings

logger = logging.getLogger(__name__)

CHUNK_SIZE = 4  # images per task sent to a worker: enough to amortise pickling, small enough to balance
CHUNKS_IN_FLIGHT_PER_WORKER = 4  # bounds memory: only this many chunks are ever read or decoded ahead
READ_THREADS, READ_AHEAD = 8, 32  # gs:// reads in flight in the parent, and how far ahead they may run


@dataclass(frozen=True)
class BuildOutcome:
    """Every planned shard's record, and which of them this run reused from an earlier run."""

    shards: tuple[ShardRecord, ...]
    reused: tuple[str, ...]
    built: tuple[str, ...]


def _bounded_map(pool: Executor, function: Callable, items: Iterable, window: int) -> Iterator:
    """pool.map in order, but at most `window` calls ahead of the consumer (Executor.map submits all)."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def image_task(item: PlanItem) -> ImageTask:
    """Local files are read by the worker; gs:// files are read here, since workers never load TensorFlow."""
    if not files.is_remote(item.path):
        return ImageTask(item.image, item.path, item.box)
    try:
        return ImageTask(item.image, files.read_bytes(item.path), item.box)
    except (tf.errors.OpError, OSError) as error:
        if files.is_storage_error(error):  # an outage, not a bad photo: stop; the same command resumes
            raise
        return ImageTask(item.image, b"", item.box, error=f"cannot read image file: {error}")


def _tasks(items: Iterable[PlanItem]) -> Iterator[ImageTask]:
    """Tasks in order; a few threads fetch gs:// bytes ahead, since each read mostly waits on the network."""
    with ThreadPoolExecutor(READ_THREADS) as threads:
        yield from _bounded_map(threads, image_task, items, READ_AHEAD)


def _chunks(tasks: Iterable[ImageTask], size: int) -> Iterator[list[ImageTask]]:
    chunk: list[ImageTask] = []
    for task in tasks:
        chunk.append(task)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def process_in_order(
    tasks: Iterable[ImageTask],
    settings: ImageSettings,
    workers: int,
    pool: Executor | None = None,
    sift: SiftSettings | None = None,
    chunk_function: Callable = process_chunk,
) -> Iterator[ImageResult]:
    """Results in task order; with workers > 1 from a spawn pool, a bounded number of chunks ahead.

    `pool` is one imaging.start_pool already started (and shut down by whoever started it); without it a
    pool is started here and shut down at the end. The parent has TensorFlow loaded: spawned, never forked;
    the workers exit if it dies. sift: take local features too; chunk_function: imaging.features_chunk
    for features alone (add-local-features).
    """
    if workers <= 1:
        for chunk in _chunks(tasks, 1):
            yield from chunk_function(chunk, settings=settings, sift=sift)
        return
    own_pool = pool is None
    if own_pool:
        pool = start_pool(workers)
    try:
        process = functools.partial(chunk_function, settings=settings, sift=sift)
        window = workers * CHUNKS_IN_FLIGHT_PER_WORKER
        for results in _bounded_map(pool, process, _chunks(tasks, CHUNK_SIZE), window):
            yield from results
    finally:
        if own_pool:
            pool.shutdown(wait=True, cancel_futures=True)


def _encode(shard: PlannedShard, item: PlanItem, jpeg: bytes) -> bytes:
    if shard.split == "test":
        return records.encode_test_example(jpeg, item.image)
    return records.encode_train_example(
        jpeg, item.image, item.individual_id, item.label, item.species, item.species_label, item.fold
    )


def _write_records(
    shard: PlannedShard,
    results: Iterator[ImageResult],
    path: str,
    advance: Callable[[int], Any],
    found: list[tuple[str, LocalFeatures]],
) -> tuple[int, list[Reject], Counter, int]:
    """Write the shard's records to `path`; each written photo's local features (if taken) go to `found`."""
    count, rejects, fallbacks, no_box = 0, [], Counter(), 0
    with tf.io.TFRecordWriter(path) as writer:
        for item in shard.items:
            result = next(results)
            if result.image != item.image:
                raise RuntimeError(f"worker results out of order: expected {item.image}, got {result.image}")
            advance(1)
            if result.jpeg is None or result.info is None:
                rejects.append(Reject(item.image, item.row, "image", result.error or "unknown error"))
                continue
            writer.write(_encode(shard, item, result.jpeg))
            if result.features is not None:
                found.append((item.image, result.features))
            count += 1
            no_box += result.info.no_box
            if result.info.fallback:
                fallbacks[result.info.fallback] += 1
    return count, rejects, fallbacks, no_box


def _publish(staging: str, final: str, digest: str, n_bytes: int) -> None:
    """Rename a complete shard into place; for gs:// upload to a temp name and re-check it first."""
    if not files.is_remote(final):
        files.commit(staging, final)
        return
    remote_temp = files.temp_name(final)
    files.gfile.copy(staging, remote_temp, overwrite=True)
    if files.size(remote_temp) != n_bytes or files.sha256(remote_temp) != digest:
        files.remove(remote_temp)
        raise OSError(f"{final}: the uploaded shard does not match what was written (size or sha256 differ)")
    files.commit(remote_temp, final)


def write_shard(
    shard: PlannedShard,
    results: Iterator[ImageResult],
    out: str,
    advance: Callable[[int], Any] = lambda _: None,
    sift: SiftSettings | None = None,
) -> ShardRecord:
    """Write one shard under a temp name, then make it visible, then its local-feature file (when `sift`:
    the results carry features), then record its sidecar.

    Safe to run twice on the same shard, even at once (a Beam retry or a duplicated bundle): each run has
    its own temp name and the same bytes, and the rename replaces the shard whole.
    """
    final = files.join(out, shard.name)
    if files.is_remote(final):
        handle, staging = tempfile.mkstemp(suffix=records.SHARD_SUFFIX)
        os.close(handle)
    else:
        staging = files.temp_name(final)
    found: list[tuple[str, LocalFeatures]] = []
    try:
        count, rejects, fallbacks, no_box = _write_records(shard, results, staging, advance, found)
        digest, n_bytes = files.sha256(staging), files.size(staging)
        _publish(staging, final, digest, n_bytes)
    finally:
        files.remove(staging)
    features = None
    if sift is not None:
        features = write_features(out, shard.name, [n for n, _ in found], [f for _, f in found])
    record = ShardRecord(
        shard.name,
        shard.split,
        shard.fold,
        count,
        digest,
        n_bytes,
        shard.fingerprint,
        tuple(rejects),
        dict(sorted(fallbacks.items())),
        no_box,
        features,
    )
    files.write_json(parts_path(out, f"{shard.name}.json"), record.to_json())
    return record


def write_shards(
    plan: Sequence[PlannedShard],
    out: str,
    settings: ImageSettings,
    workers: int,
    reusable: dict[str, ShardRecord],
    progress: bool = True,
    pool: Executor | None = None,
    sift: SiftSettings | None = None,
) -> BuildOutcome:
    """Build every planned shard that is not in `reusable` (the finished shards prepare_output found);
    sift: take each photo's local features too, into a file beside each shard."""
    pending = [shard for shard in plan if shard.name not in reusable]
    if reusable:
        logger.info("reusing %d finished shard(s) from an earlier run", len(reusable))
    total = sum(len(shard.items) for shard in pending)
    logger.info("building %d shard(s), %d images, with %d worker(s)", len(pending), total, workers)
    tasks = _tasks(item for shard in pending for item in shard.items)
    built: dict[str, ShardRecord] = {}
    bar = tqdm(total=total, unit="img", desc="build-tfrecords", disable=None if progress else True)
    with bar, closing(tasks), closing(process_in_order(tasks, settings, workers, pool, sift)) as results:
        for number, shard in enumerate(pending, 1):
            record = built[shard.name] = write_shard(shard, results, out, bar.update, sift)
            if bar.disable:  # no bar on a pipe (CI, notebooks): a line per shard instead
                logger.info(
                    "[%d/%d] %s: %d images, %d rejected",
                    number,
                    len(pending),
                    shard.name,
                    record.count,
                    len(record.rejects),
                )
    finished = {**reusable, **built}
    return BuildOutcome(
        shards=tuple(finished[shard.name] for shard in plan),
        reused=tuple(shard.name for shard in plan if shard.name in reusable),
        built=tuple(built),
    )
