"""File access for every stage: one place where local paths and gs:// behave alike (tf.io.gfile)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

gfile = tf.io.gfile
builtins_open = open  # this module shadows `open` below; temp files are always local
_CHUNK = 8 << 20
# What a storage outage looks like through tf.io.gfile once its retries are spent (gs:// mostly):
# transient, so the same command, run again, resumes where it stopped.
STORAGE_ERRORS = (
    tf.errors.AbortedError,
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.ResourceExhaustedError,
)
_OBJECT = re.compile(r"gs://[^\s'\",;)]+")


def is_remote(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/"))


def exists(path: str) -> bool:
    return gfile.exists(path)


def isdir(path: str) -> bool:
    return gfile.isdir(path)


def makedirs(path: str) -> None:
    gfile.makedirs(path)


def listdir(path: str) -> list[str]:
    """Names in a folder (no trailing slashes), sorted; empty when it does not exist."""
    if not gfile.exists(path):
        return []
    return sorted(name.rstrip("/") for name in gfile.listdir(path))


def glob(pattern: str) -> list[str]:
    return sorted(gfile.glob(pattern))


def remove(path: str) -> None:
    if gfile.exists(path):
        gfile.remove(path)


def rmtree(path: str) -> None:
    if gfile.exists(path):
        gfile.rmtree(path)


def size(path: str) -> int:
    return gfile.stat(path).length


def open(path: str, mode: str = "r"):  # noqa: A001 - mirrors the builtin on purpose
    return gfile.GFile(path, mode)


def read_bytes(path: str) -> bytes:
    with gfile.GFile(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    with gfile.GFile(path, "r") as f:
        return f.read()


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def temp_name(path: str) -> str:
    """A sibling name that readers never mistake for a finished file."""
    return f"{path}.tmp-{uuid.uuid4().hex[:8]}"


def commit(tmp_path: str, final_path: str) -> None:
    """Make a fully written temp file visible under its final name."""
    gfile.rename(tmp_path, final_path, overwrite=True)


def write_bytes(path: str, data: bytes) -> None:
    """Write atomically: a reader sees the old file, or the whole new one, never a part."""
    tmp = temp_name(path)
    with gfile.GFile(tmp, "wb") as f:
        f.write(data)
    commit(tmp, path)


def create_exclusive(path: str, text: str) -> bool:
    """Create `path` with `text` only if it does not exist yet; False when it already does.

    Atomic for local paths (O_EXCL). tf.io.gfile has no conditional write for gs://: there the check and
    the write are two requests, so a caller that must win a race reads the file back afterwards.
    """
    if is_remote(path):
        if gfile.exists(path):
            return False
        write_text(path, text)
        return True
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def iter_chunks(path: str, chunk_size: int = _CHUNK) -> Iterator[bytes]:
    # Local files directly: GFile copies every chunk once more through TensorFlow's buffers.
    with gfile.GFile(path, "rb") if is_remote(path) else builtins_open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk


def sha256(path: str) -> str:
    if not is_remote(path):  # a build hashes every shard it writes: half the CPU of reading through GFile
        with builtins_open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    digest = hashlib.sha256()
    for chunk in iter_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local file with `path`'s content, for libraries that only open local files (h5py, zip)."""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, basename(path))
        with builtins_open(local, "wb") as f:
            f.write(read_bytes(path))
        yield local


@contextlib.contextmanager
def written_via_local(path: str) -> Iterator[str]:
    """A local temp path to write; on success its content lands at `path` atomically (local or gs://)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, basename(path))
        yield local
        with builtins_open(local, "rb") as f:
            write_bytes(path, f.read())


def is_storage_error(error: BaseException) -> bool:
    """A transient storage failure (outage, retries exhausted, timeout), as opposed to a bad path or input."""
    return isinstance(error, STORAGE_ERRORS)


def storage_error_message(error: BaseException, command: str = "the same command") -> str:
    """One line for a storage failure: the object it was about, TF's reason, and that a rerun resumes."""
    text = getattr(error, "message", None) or str(error)
    found = _OBJECT.search(text)
    where = found.group(0).rstrip(".") if found else "remote storage"
    reason = " ".join(text.split())
    reason = re.sub(r"^\{\{[^}]*\}\}\s*", "", reason)[:300]
    return (
        f"storage error on {where} ({type(error).__name__}: {reason}); nothing finished is lost: "
        f"run {command} again to resume"
    )


_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def is_unwritable_error(error: BaseException) -> bool:
    """A write refused by the file system (read-only disk or folder, no permission), local or gs://."""
    if isinstance(error, tf.errors.PermissionDeniedError):
        return True
    return isinstance(error, OSError) and error.errno in _UNWRITABLE


def unwritable_message(error: BaseException, flag: str, path: str) -> str:
    """One line for a refused write under `path` (given by `flag`): what, why, what to do."""
    reason = " ".join((getattr(error, "message", None) or str(error)).split())[:300]
    return f"{flag} {path}: cannot write there ({reason}); give a writable folder, or make this one writable"
