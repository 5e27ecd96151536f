"""Test helper: a folder the test process really cannot write (chattr +i as root, else chmod 555)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """`folder` (made here) read-only for the duration; skips the test where that cannot be arranged."""
    folder.mkdir(parents=True, exist_ok=True)
    root = os.geteuid() == 0
    if root:  # permissions do not stop root; the immutable flag does
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    else:
        folder.chmod(0o555)
        done = True
    try:
        if not done or _writable(folder):
            pytest.skip("cannot make a read-only folder here")
        yield folder
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        else:
            folder.chmod(0o755)
