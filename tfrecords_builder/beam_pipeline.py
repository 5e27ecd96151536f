"""build-tfrecords --runner beam: the planned shards built by Apache Beam (Direct, Dataflow, Flink, Spark).

The launcher plans (cli.plan_build) and finishes (manifest.json) exactly as a local build does; only the
per-photo work and the shard writes run on Beam's workers, through the same functions the local build
calls (writer.image_task, imaging.process_task, writer.write_shard), so the shards are byte-identical.

Pipeline: shard names -> each shard's photos (read from its plan file) -> reshuffle (photos spread over
workers, not one shard per worker) -> crop/resize/encode -> group by shard -> write the shard whole.
Beam may retry a bundle or run it twice: a photo's result is keyed by its position in the shard (a second
copy replaces the first), and writer.write_shard writes to its own temp name and renames, so a repeated
write leaves one complete shard. apache_beam is imported only here, and only when a Beam build runs.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tfrecords_builder.errors import BuildInputError
from tfrecords_builder.imaging import ImageResult, process_task
from tfrecords_builder.plan import PlanItem, PlannedShard
from tfrecords_builder.resume import ShardRecord, parts_path, remove_temp_files
from tfrecords_builder.writer import BuildOutcome, image_task, write_shard
from tfwhale.core import files
from tfwhale.imaging.photo_crop import ImageSettings

logger = logging.getLogger(__name__)

PLAN_DIR = "beam-plan"  # under OUT/.parts: one JSON per shard to build, read by the workers
# Test hook: "photo:IMAGE" or "shard:SHARD_NAME" raises once (a marker file in the plan folder remembers
# the first try, across worker processes), so tests can watch Beam retry a bundle.
FAIL_ONCE_ENV = "TFWHALE_BEAM_FAIL_ONCE"
IO_THREADS = 8  # plan files written and sidecars read at once by the launcher
MISSING_BEAM = "--runner beam needs Apache Beam: pip install 'tfwhale[beam]'"


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def import_beam() -> Any:
    """apache_beam, or a BuildInputError naming the extra that installs it.

    Beam's own INFO lines (job service, worker start-up, a few per bundle) are turned down to warnings
    unless its logger was set on purpose; its import-time warning about BigQuery's client (which a build
    never uses) is dropped.
    """
    root, drop = logging.getLogger(), _DropMessage("apitools not found")
    root.addFilter(drop)
    try:
        import apache_beam
    except ImportError as error:
        raise BuildInputError(f"{MISSING_BEAM} ({error})") from error
    finally:
        root.removeFilter(drop)
    beam_logger = logging.getLogger("apache_beam")
    if beam_logger.level == logging.NOTSET:
        beam_logger.setLevel(logging.WARNING)
    return apache_beam


def pipeline_options(text: str) -> Any:
    """--beam-options, split like a shell would, handed to Beam's PipelineOptions unchanged."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(shlex.split(text or ""))


def check_reachable(options: Any, paths: Iterable[str | None]) -> None:
    """Dataflow workers cannot see this machine's disk: every input and the output must be gs://."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner or ""
    if "dataflow" not in str(runner).lower():
        return
    local = [path for path in paths if path and not files.is_remote(path)]
    if local:
        raise BuildInputError(
            f"{local[0]}: Dataflow workers cannot read local paths; copy the inputs to gs:// and use a "
            "gs:// --out"
        )


def plan_path(out: str, name: str = "") -> str:
    return parts_path(out, f"{PLAN_DIR}/{name}" if name else PLAN_DIR)


def write_plan(out: str, shards: Sequence[PlannedShard]) -> None:
    """Each shard's plan, where every worker can read it (the pipeline itself only carries names)."""
    files.makedirs(plan_path(out))
    with ThreadPoolExecutor(IO_THREADS) as threads:  # on gs:// each write mostly waits on the network
        list(threads.map(lambda s: files.write_json(plan_path(out, f"{s.name}.json"), s.to_json()), shards))


def read_plan(out: str, name: str) -> PlannedShard:
    return PlannedShard.from_json(files.read_json(plan_path(out, f"{name}.json")))


def fail_once(stage: str, name: str, out: str) -> None:
    """Raise on the first try of the step FAIL_ONCE_ENV names; nothing otherwise (see FAIL_ONCE_ENV)."""
    if os.environ.get(FAIL_ONCE_ENV) != f"{stage}:{name}":
        return
    if files.create_exclusive(plan_path(out, f"failed-once-{stage}-{name}"), "1"):
        raise RuntimeError(f"{FAIL_ONCE_ENV}: failing the first try of {stage} {name} on purpose")


def expand_shard(name: str, out: str) -> Iterator[tuple[str, tuple[int, PlanItem]]]:
    """(shard name, (position, photo)) for every photo the shard's plan lists."""
    for position, item in enumerate(read_plan(out, name).items):
        yield name, (position, item)


def process_photo(
    element: tuple[str, tuple[int, PlanItem]], settings: ImageSettings, out: str, sift: Any = None
) -> tuple[str, tuple[int, ImageResult]]:
    """One photo read, cropped, resized and encoded by the local build's own code (its local features
    too, when `sift`: matching.features.SiftSettings); rejects come back too."""
    name, (position, item) = element
    fail_once("photo", item.image, out)
    return name, (position, process_task(image_task(item), settings, sift))


def ordered_results(shard: PlannedShard, results: Iterable[tuple[int, ImageResult]]) -> list[ImageResult]:
    """The shard's results in plan order, one per photo; a duplicate (a retried bundle) replaces its twin."""
    by_position = dict(results)
    missing = [shard.items[i].image for i in range(len(shard.items)) if i not in by_position]
    if missing or len(by_position) != len(shard.items):
        raise RuntimeError(f"{shard.name}: {len(missing)} photo result(s) missing, e.g. {missing[:3]}")
    return [by_position[i] for i in range(len(shard.items))]


def write_grouped_shard(
    element: tuple[str, Iterable[tuple[int, ImageResult]]], out: str, sift: Any = None
) -> str:
    """Write one shard whole (temp name, then rename) with its sidecar (and its feature file, when
    `sift`); returns the shard's name."""
    name, results = element
    shard = read_plan(out, name)
    write_shard(shard, iter(ordered_results(shard, results)), out, sift=sift)
    fail_once("shard", name, out)  # after the write: the retry writes the same shard a second time
    return name


def build_pipeline(
    pipeline: Any, names: Sequence[str], out: str, settings: ImageSettings, sift: Any = None
) -> Any:
    """The transforms, on `pipeline`; returns the collection of written shard names."""
    beam = import_beam()
    return (
        pipeline
        | "Shards" >> beam.Create(list(names))
        | "Photos" >> beam.FlatMap(expand_shard, out)
        | "Spread" >> beam.Reshuffle()
        | "Process" >> beam.Map(process_photo, settings, out, sift)
        | "ByShard" >> beam.GroupByKey()
        | "Write" >> beam.Map(write_grouped_shard, out, sift)
    )


def write_shards(
    plan: Sequence[PlannedShard],
    out: str,
    settings: ImageSettings,
    reusable: dict[str, ShardRecord],
    beam_options: str = "",
    sift: Any = None,
) -> BuildOutcome:
    """Build every planned shard not in `reusable` on Beam; blocks until the pipeline has finished.
    sift: take local features too (matching.features.SiftSettings), as the local runner does."""
    beam = import_beam()
    pending = [shard for shard in plan if shard.name not in reusable]
    if reusable:
        logger.info("reusing %d finished shard(s) from an earlier run", len(reusable))
    total = sum(len(shard.items) for shard in pending)
    options = pipeline_options(beam_options)
    logger.info("building %d shard(s), %d images, on Apache Beam (%s)", len(pending), total, beam_options)
    built: dict[str, ShardRecord] = {}
    if pending:
        write_plan(out, pending)
        pipeline = beam.Pipeline(options=options)
        names = [shard.name for shard in pending]
        build_pipeline(pipeline, names, out, settings, sift)
        state = pipeline.run().wait_until_finish()  # a failed pipeline raises; a cancelled one returns
        if state not in (beam.runners.runner.PipelineState.DONE, beam.runners.runner.PipelineState.UNKNOWN):
            raise RuntimeError(f"the Beam pipeline ended in state {state}")
        with ThreadPoolExecutor(IO_THREADS) as threads:
            built = dict(zip(names, threads.map(lambda s: _written_record(out, s), pending), strict=True))
        remove_temp_files(out)  # left by a worker killed mid-write; its retry wrote the shard again
        files.rmtree(plan_path(out))
    finished = {**reusable, **built}
    return BuildOutcome(
        shards=tuple(finished[shard.name] for shard in plan),
        reused=tuple(shard.name for shard in plan if shard.name in reusable),
        built=tuple(built),
    )


def _written_record(out: str, shard: PlannedShard) -> ShardRecord:
    """The sidecar a worker wrote next to the shard; the pipeline's output never leaves the cluster."""
    sidecar = parts_path(out, f"{shard.name}.json")
    if not files.exists(sidecar):
        raise RuntimeError(f"{sidecar}: the Beam pipeline finished but wrote no record of {shard.name}")
    record = ShardRecord.from_json(files.read_json(sidecar))
    if record.fingerprint != shard.fingerprint:
        raise RuntimeError(f"{sidecar}: its fingerprint is not this build's plan for {shard.name}")
    return record
