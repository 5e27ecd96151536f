"""Shared test setup: quiet TensorFlow, the GCS emulator fixtures (imported before TensorFlow)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tests.browser_fixture import browser  # noqa: F401 - the browser tests' Chromium, one per module
from tests.gcs_fixture import gcs_bucket, gcs_server  # noqa: F401 - fixtures; TF reads GCS_* at import
from tests.serve_fixture import serve_gallery  # noqa: F401 - the catalogue app tests' gallery
