"""build-tfrecords writing: images through worker processes into atomic shards; resumes unfinished builds."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import re
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from typing import Any

import tensorflow as tf
from tqdm import tqdm

from tfrecords_builder.errors import BuildInputError, Reject
from tfrecords_builder.imaging import ImageResult, ImageSettings, ImageTask, process_chunk, process_task
from tfrecords_builder.plan import PlanItem, PlannedShard
from tfwhale import io, records

logger = logging.getLogger(__name__)

PARTS_DIR = ".parts"
BUILD_STATE = "build.json"
_TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]{8}$")  # tfwhale.io.temp_name's suffix
CHUNK_SIZE = 4  # images per task sent to a worker: enough to amortise pickling, small enough to balance
CHUNKS_IN_FLIGHT_PER_WORKER = 4  # bounds memory: only this many chunks are ever read or decoded ahead
READ_THREADS, READ_AHEAD = 8, 32  # gs:// reads in flight in the parent, and how far ahead they may run


@dataclass(frozen=True)
class ShardRecord:
    """A finished shard as its sidecar (.parts/<shard>.json) describes it."""

    name: str
    split: str
    fold: int | None
    count: int
    sha256: str
    bytes: int
    fingerprint: str
    rejects: tuple[Reject, ...] = ()
    fallbacks: dict[str, int] = field(default_factory=dict)
    no_box: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rejects"] = [asdict(reject) for reject in self.rejects]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardRecord:
        rejects = tuple(Reject(**reject) for reject in data.get("rejects", []))
        return cls(**{**data, "rejects": rejects})

    def manifest_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "split": self.split}
        if self.fold is not None:
            entry["fold"] = self.fold
        return {**entry, "count": self.count, "sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class BuildOutcome:
    """Every planned shard's record, and which of them this run reused from an earlier run."""

    shards: tuple[ShardRecord, ...]
    reused: tuple[str, ...]
    built: tuple[str, ...]


def default_workers() -> int:
    """The CPUs this process may run on (its affinity mask, which may be fewer than the host has)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def parts_path(out: str, name: str = "") -> str:
    return io.join(out, PARTS_DIR, name) if name else io.join(out, PARTS_DIR)


def _shard_files(out: str) -> list[str]:
    return [name for name in io.listdir(out) if name.endswith(records.SHARD_SUFFIX)]


def _previous_settings(out: str) -> dict[str, Any] | None:
    """The settings of the build already in `out`: from an unfinished run's state, else from its manifest."""
    state = parts_path(out, BUILD_STATE)
    if io.exists(state):
        return io.read_json(state)["settings"]
    manifest = io.join(out, records.MANIFEST_NAME)
    if io.exists(manifest):
        return io.read_json(manifest).get("build", {}).get("settings")
    return None


def _clear_build(out: str) -> None:
    """--overwrite: remove only what a build writes (shards, temp files, manifest, rejects, sidecars)."""
    for name in io.listdir(out):
        if name.endswith(records.SHARD_SUFFIX) or _TEMP_NAME.search(name):
            io.remove(io.join(out, name))
    for name in (records.MANIFEST_NAME, records.REJECTS_NAME):
        io.remove(io.join(out, name))
    io.rmtree(parts_path(out))


def _check_same_settings(out: str, settings: dict[str, Any]) -> None:
    previous = _previous_settings(out)
    if previous is None:
        if shards := _shard_files(out):
            raise BuildInputError(
                f"{out} already holds TFRecord shards ({', '.join(shards[:3])}) that no build-tfrecords "
                "state describes; pass --overwrite to replace them, or choose another --out"
            )
        return
    keys = sorted(set(previous) | set(settings))
    changes = [
        f"{key} {previous.get(key)!r} -> {settings.get(key)!r}"
        for key in keys
        if previous.get(key) != settings.get(key)
    ]
    if changes:
        raise BuildInputError(
            f"{out} holds a build made with other settings ({'; '.join(changes)}); pass --overwrite to "
            "rebuild it from scratch, or choose another --out"
        )


def find_reusable(plan: Sequence[PlannedShard], out: str) -> dict[str, ShardRecord]:
    """Finished shards of an earlier run that still match the plan; refuses when the input has changed."""
    planned = {shard.name: shard for shard in plan}
    reusable: dict[str, ShardRecord] = {}
    stale: list[str] = []
    for sidecar in io.listdir(parts_path(out)):
        name = sidecar.removesuffix(".json")
        if not name.endswith(records.SHARD_SUFFIX):
            continue
        record = ShardRecord.from_json(io.read_json(parts_path(out, sidecar)))
        shard_path = io.join(out, name)
        if name not in planned or record.fingerprint != planned[name].fingerprint:
            stale.append(name)
        elif io.exists(shard_path) and io.size(shard_path) == record.bytes:
            reusable[name] = record
    if stale:
        raise BuildInputError(
            f"the input changed since the build in {out} was started: {len(stale)} finished shard(s) "
            f"no longer match the images, labels or boxes planned for them ({', '.join(sorted(stale)[:3])}); "
            "pass --overwrite to rebuild from scratch"
        )
    return reusable


def _remove_temp_files(out: str) -> None:
    """Temp files of an interrupted run: never counted as shards, and removed before writing again."""
    for folder in (out, parts_path(out)):
        for name in io.listdir(folder):
            if _TEMP_NAME.search(name):
                io.remove(io.join(folder, name))


def prepare_output(
    out: str, settings: dict[str, Any], plan: Sequence[PlannedShard], overwrite: bool
) -> dict[str, ShardRecord]:
    """Make `out` ready and return the finished shards of an earlier run that can be kept.

    --overwrite starts fresh; otherwise an earlier build there must have the same settings and input
    (BuildInputError before anything is touched). Then the old manifest goes, so that the folder never
    looks finished while shards are being written.
    """
    io.makedirs(out)
    if overwrite:
        _clear_build(out)
    else:
        _check_same_settings(out, settings)
    io.makedirs(parts_path(out))
    reusable = find_reusable(plan, out)
    io.remove(io.join(out, records.MANIFEST_NAME))
    _remove_temp_files(out)
    io.write_json(parts_path(out, BUILD_STATE), {"settings": settings})
    return reusable


def _bounded_map(pool: Executor, function: Callable, items: Iterable, window: int) -> Iterator:
    """pool.map in order, but at most `window` calls ahead of the consumer (Executor.map submits all)."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _task(item: PlanItem) -> ImageTask:
    """Local files are read by the worker; gs:// files are read here, since workers never load TensorFlow."""
    if not io.is_remote(item.path):
        return ImageTask(item.image, item.path, item.box)
    try:
        return ImageTask(item.image, io.read_bytes(item.path), item.box)
    except (tf.errors.OpError, OSError) as error:
        return ImageTask(item.image, b"", item.box, error=f"cannot read image file: {error}")


def _tasks(items: Iterable[PlanItem]) -> Iterator[ImageTask]:
    """Tasks in order; a few threads fetch gs:// bytes ahead, since each read mostly waits on the network."""
    with ThreadPoolExecutor(READ_THREADS) as threads:
        yield from _bounded_map(threads, _task, items, READ_AHEAD)


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
    tasks: Iterable[ImageTask], settings: ImageSettings, workers: int
) -> Iterator[ImageResult]:
    """Results in task order; with workers > 1 from a spawn pool, a bounded number of chunks ahead.

    The parent has TensorFlow loaded, so workers are spawned, never forked.
    """
    if workers <= 1:
        yield from (process_task(task, settings) for task in tasks)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        process = functools.partial(process_chunk, settings=settings)
        window = workers * CHUNKS_IN_FLIGHT_PER_WORKER
        for results in _bounded_map(pool, process, _chunks(tasks, CHUNK_SIZE), window):
            yield from results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _encode(shard: PlannedShard, item: PlanItem, jpeg: bytes) -> bytes:
    if shard.split == "test":
        return records.encode_test_example(jpeg, item.image)
    return records.encode_train_example(
        jpeg, item.image, item.individual_id, item.label, item.species, item.species_label, item.fold
    )


def _write_records(
    shard: PlannedShard, results: Iterator[ImageResult], path: str, advance: Callable[[int], Any]
) -> tuple[int, list[Reject], Counter, int]:
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
            count += 1
            no_box += result.info.no_box
            if result.info.fallback:
                fallbacks[result.info.fallback] += 1
    return count, rejects, fallbacks, no_box


def _publish(staging: str, final: str, digest: str, n_bytes: int) -> None:
    """Rename a complete shard into place; for gs:// upload to a temp name and re-check it first."""
    if not io.is_remote(final):
        io.commit(staging, final)
        return
    remote_temp = io.temp_name(final)
    io.gfile.copy(staging, remote_temp, overwrite=True)
    if io.size(remote_temp) != n_bytes or io.sha256(remote_temp) != digest:
        io.remove(remote_temp)
        raise OSError(f"{final}: the uploaded shard does not match what was written (size or sha256 differ)")
    io.commit(remote_temp, final)


def _write_shard(
    shard: PlannedShard, results: Iterator[ImageResult], out: str, advance: Callable[[int], Any]
) -> ShardRecord:
    """Write one shard under a temp name, then make it visible, then record its sidecar."""
    final = io.join(out, shard.name)
    if io.is_remote(final):
        handle, staging = tempfile.mkstemp(suffix=records.SHARD_SUFFIX)
        os.close(handle)
    else:
        staging = io.temp_name(final)
    try:
        count, rejects, fallbacks, no_box = _write_records(shard, results, staging, advance)
        digest, n_bytes = io.sha256(staging), io.size(staging)
        _publish(staging, final, digest, n_bytes)
    finally:
        io.remove(staging)
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
    )
    io.write_json(parts_path(out, f"{shard.name}.json"), record.to_json())
    return record


def write_shards(
    plan: Sequence[PlannedShard],
    out: str,
    settings: ImageSettings,
    workers: int,
    reusable: dict[str, ShardRecord],
    progress: bool = True,
) -> BuildOutcome:
    """Build every planned shard that is not in `reusable` (the finished shards prepare_output found)."""
    pending = [shard for shard in plan if shard.name not in reusable]
    if reusable:
        logger.info("reusing %d finished shard(s) from an earlier run", len(reusable))
    total = sum(len(shard.items) for shard in pending)
    logger.info("building %d shard(s), %d images, with %d worker(s)", len(pending), total, workers)
    tasks = _tasks(item for shard in pending for item in shard.items)
    built: dict[str, ShardRecord] = {}
    bar = tqdm(total=total, unit="img", desc="build-tfrecords", disable=None if progress else True)
    with bar, closing(tasks), closing(process_in_order(tasks, settings, workers)) as results:
        for number, shard in enumerate(pending, 1):
            record = built[shard.name] = _write_shard(shard, results, out, bar.update)
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
