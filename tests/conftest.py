"""Shared test setup: quiet TensorFlow, 2 logical CPU devices, small synthetic fixtures."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
