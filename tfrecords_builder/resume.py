"""build-tfrecords state: finished shards' sidecars, and what an interrupted build left that can be kept."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tfrecords_builder import local_features
from tfrecords_builder.errors import BuildInputError, Reject
from tfrecords_builder.plan import PlannedShard
from tfwhale.contracts import records
from tfwhale.core import files

logger = logging.getLogger(__name__)

PARTS_DIR = ".parts"
BUILD_STATE = "build.json"
_TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]{8}$")  # tfwhale.core.files.temp_name's suffix


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
    features: dict[str, Any] | None = None  # its local-feature file (local_features.write_features)

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
        entry = {**entry, "count": self.count, "sha256": self.sha256, "bytes": self.bytes}
        return {**entry, "features": self.features} if self.features else entry


def parts_path(out: str, name: str = "") -> str:
    return files.join(out, PARTS_DIR, name) if name else files.join(out, PARTS_DIR)


def _shard_files(out: str) -> list[str]:
    return [name for name in files.listdir(out) if name.endswith(records.SHARD_SUFFIX)]


def _previous_settings(out: str) -> dict[str, Any] | None:
    """The settings of the build already in `out`: from an unfinished run's state, else from its manifest."""
    state = parts_path(out, BUILD_STATE)
    if files.exists(state):
        return files.read_json(state)["settings"]
    manifest = files.join(out, records.MANIFEST_NAME)
    if files.exists(manifest):
        return files.read_json(manifest).get("build", {}).get("settings")
    return None


def _clear_build(out: str) -> None:
    """--overwrite: remove only what a build writes (shards, temp files, manifest, rejects, sidecars)."""
    for name in files.listdir(out):
        if name.endswith((records.SHARD_SUFFIX, records.FEATURES_SUFFIX)) or _TEMP_NAME.search(name):
            files.remove(files.join(out, name))
    for name in (records.MANIFEST_NAME, records.REJECTS_NAME):
        files.remove(files.join(out, name))
    files.rmtree(parts_path(out))


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
    if changes == [
        f"local_features {previous.get('local_features')!r} -> {settings.get('local_features')!r}"
    ]:
        raise BuildInputError(
            f"{out} holds a build made {'without' if settings.get('local_features') else 'with'} local "
            "features; to add them without rebuilding the images run `build-tfrecords add-local-features "
            f"--out {out}`; to build anew pass --overwrite, or choose another --out"
        )
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
    for sidecar in files.listdir(parts_path(out)):
        name = sidecar.removesuffix(".json")
        if not name.endswith(records.SHARD_SUFFIX):
            continue
        record = ShardRecord.from_json(files.read_json(parts_path(out, sidecar)))
        shard_path = files.join(out, name)
        if name not in planned or record.fingerprint != planned[name].fingerprint:
            stale.append(name)
        elif _intact(shard_path, record):
            reusable[name] = record
    if stale:
        raise BuildInputError(
            f"the input changed since the build in {out} was started: {len(stale)} finished shard(s) "
            f"no longer match the images, labels or boxes planned for them ({', '.join(sorted(stale)[:3])}); "
            "pass --overwrite to rebuild from scratch"
        )
    return reusable


def _intact(shard_path: str, record: ShardRecord) -> bool:
    """A finished shard is kept only when its bytes are exactly those its sidecar recorded (sha256):
    a flipped byte would otherwise reach training as a DataLossError naming no file. So is its
    local-feature file, when it has one."""
    if not files.exists(shard_path):
        return False
    features_whole = record.features is None or local_features.intact(
        files.dirname(shard_path), record.features
    )
    if (
        features_whole
        and files.size(shard_path) == record.bytes
        and files.sha256(shard_path) == record.sha256
    ):
        return True
    logger.warning(
        "%s: size or sha256 differs from what this build wrote (changed or corrupt); rebuilding it",
        shard_path,
    )
    return False


def remove_temp_files(out: str) -> None:
    """Temp files of an interrupted run: never counted as shards, and removed before writing again."""
    for folder in (out, parts_path(out)):
        for name in files.listdir(folder):
            if _TEMP_NAME.search(name):
                files.remove(files.join(folder, name))


def prepare_output(
    out: str, settings: dict[str, Any], plan: Sequence[PlannedShard], overwrite: bool
) -> dict[str, ShardRecord]:
    """Make `out` ready and return the finished shards of an earlier run that can be kept.

    --overwrite starts fresh; otherwise an earlier build there must have the same settings and input
    (BuildInputError before anything is touched). Then the old manifest goes, so that the folder never
    looks finished while shards are being written.
    """
    files.makedirs(out)
    if overwrite:
        _clear_build(out)
    else:
        _check_same_settings(out, settings)
    files.makedirs(parts_path(out))
    reusable = find_reusable(plan, out)
    files.remove(files.join(out, records.MANIFEST_NAME))
    remove_temp_files(out)
    files.write_json(parts_path(out, BUILD_STATE), {"settings": settings})
    return reusable
