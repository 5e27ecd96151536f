"""Pytest fixtures for gs:// tests: one local GCS emulator per session, a fresh bucket per test.

tests/conftest.py imports this module before any test module imports TensorFlow, because TF reads its
GCS retry settings (TF_IMPORT_TIME_ENV) once, at import.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator

import pytest

from tests.gcs_emulator import (
    TF_IMPORT_TIME_ENV,
    GcsEmulator,
    create_bucket,
    gcs_environ,
    patched_environ,
    run_gcs_emulator,
)

if "tensorflow" in sys.modules:
    warnings.warn(
        "gcs_fixture was imported after TensorFlow: failing gs:// requests will retry for minutes",
        stacklevel=1,
    )
for _name, _value in TF_IMPORT_TIME_ENV.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsEmulator]:
    """The session's emulator; while it runs, the environment points TF and google-cloud-storage at it."""
    with run_gcs_emulator() as emulator, patched_environ(gcs_environ(emulator)):
        yield emulator


@pytest.fixture
def gcs_bucket(gcs_server: GcsEmulator) -> str:
    """A new empty bucket, as "gs://<name>" (no trailing slash)."""
    return create_bucket(gcs_server)
