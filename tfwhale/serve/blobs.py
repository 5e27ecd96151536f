"""The catalogue's image files (serve): stored under their content hash, never under a client-given name."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

_HASH = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """DIR/blobs/ab/abcdef....jpg; a file appears whole (temp file + fsync + rename) or not at all."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root) / "blobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not _HASH.match(digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self.root / digest[:2] / f"{digest}.jpg"

    def put(self, data: bytes) -> str:
        """Store bytes; returns their sha256. Storing the same bytes twice keeps one file."""
        digest = sha256_hex(data)
        target = self.path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)  # atomic: readers see the old state or the whole file
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return digest

    def has(self, digest: str) -> bool:
        return _HASH.match(digest) is not None and self.path(digest).exists()

    def get(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()
