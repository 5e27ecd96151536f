"""build-tfrecords lock on --out: one build writes a folder at a time; a killed build's lock goes stale."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from tfrecords_builder.errors import BuildInputError
from tfwhale.core import files

logger = logging.getLogger(__name__)

LOCK_NAME = ".build.lock"
HEARTBEAT_S = 60.0  # the holder rewrites its heartbeat this often
STALE_AFTER_S = 15 * 60.0  # a lock not refreshed for this long belongs to a build that is gone
CONFIRM_DELAY_S = 1.0  # gs:// has no create-if-absent: wait, then read back to see who won


def lock_path(out: str) -> str:
    return files.join(out, LOCK_NAME)


def _now() -> float:
    return time.time()


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, but alive
        return True
    return True


def stale_reason(holder: dict[str, Any], now: float | None = None) -> str | None:
    """Why a lock no longer protects a running build, or None while its holder may still be writing."""
    now = _now() if now is None else now
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
        return f"process {holder.get('pid')} on this host is gone"
    age = now - float(holder.get("heartbeat_unix", 0))
    if age > STALE_AFTER_S:
        return f"no heartbeat for {age / 60:.0f} minutes"
    return None


def describe(holder: dict[str, Any]) -> str:
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}, "
        f"last heartbeat {holder.get('heartbeat')}"
    )


def _read(path: str) -> dict[str, Any] | None:
    try:
        return files.read_json(path) if files.exists(path) else None
    except (ValueError, OSError):  # half-written by a build killed mid-write: treat as stale
        return {}


def _body(token: str, started: float) -> str:
    now = _now()
    return json.dumps(
        {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _stamp(started),
            "heartbeat": _stamp(now),
            "heartbeat_unix": now,
            "token": token,
        },
        indent=2,
    )


def _refuse(out: str, holder: dict[str, Any]) -> BuildInputError:
    return BuildInputError(
        f"{out} is being written by another build-tfrecords ({describe(holder)}); wait for it to finish, or "
        f"if that build is dead and the lock is not yet stale (15 minutes without heartbeat), delete "
        f"{lock_path(out)}"
    )


def acquire(out: str) -> tuple[str, float]:
    """Take the lock on `out` (BuildInputError naming the holder when a live build has it).

    Returns this holder's token and start time.
    """
    path = lock_path(out)
    holder = _read(path)
    if holder is not None:
        reason = stale_reason(holder) if holder else "unreadable lock file"
        if reason is None:
            raise _refuse(out, holder)
        logger.warning("%s: taking over a stale lock (%s): %s", path, describe(holder), reason)
        files.remove(path)
    token, started = uuid.uuid4().hex, _now()
    if not files.create_exclusive(path, _body(token, started)):
        raise _refuse(out, _read(path) or {})
    if files.is_remote(path):
        time.sleep(CONFIRM_DELAY_S)
        holder = _read(path) or {}
        if holder.get("token") != token:
            raise _refuse(out, holder)
    return token, started


def _heartbeat(path: str, token: str, started: float, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            if (_read(path) or {}).get("token") != token:
                logger.warning("%s: the build lock was taken over by another build", path)
                return
            files.write_text(path, _body(token, started))
        except Exception as error:  # a missed heartbeat is not worth ending the build for
            logger.warning("%s: could not refresh the build lock: %s", path, error)


def release(out: str, token: str) -> None:
    path = lock_path(out)
    with contextlib.suppress(Exception):  # never mask the build's own outcome
        if (_read(path) or {}).get("token") == token:
            files.remove(path)


@contextlib.contextmanager
def build_lock(out: str) -> Iterator[None]:
    """Hold the lock on `out` while the block runs, refreshing its heartbeat; removed at the end."""
    files.makedirs(out)
    token, started = acquire(out)
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(lock_path(out), token, started, stop), name="build-lock", daemon=True
    )
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join(timeout=5)
        release(out, token)
