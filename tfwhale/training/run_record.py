"""Trainer: what a fold's run folder records about itself (history.csv, run.json, training curve)."""

from __future__ import annotations

import csv
import io
import platform
from typing import Any

from tfwhale.core import files


def library_versions() -> dict[str, str]:
    import keras
    import numpy
    import tensorflow as tf

    import tfwhale

    versions = {
        "tfwhale": tfwhale.__version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "numpy": numpy.__version__,
    }
    if keras.backend.backend() == "jax":
        import jax

        versions["jax"] = jax.__version__
    return versions


def write_history(path: str, history: list[dict[str, Any]]) -> None:
    """One row per finished epoch; columns are the union of the logged keys, epoch first."""
    columns = ["epoch", *sorted({key for row in history for key in row} - {"epoch"})]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    files.write_text(path, buffer.getvalue())


def plot_curve(path: str, history: list[dict[str, Any]], title: str) -> None:
    """Loss (and val MAP@5 when present) by epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, loss_ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key in ("loss", "val_loss"):
        points = [(e, row[key]) for e, row in zip(epochs, history, strict=True) if row.get(key) is not None]
        if points:
            loss_ax.plot(*zip(*points, strict=True), marker="o", label=key)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    map_points = [(e, row["val_map5"]) for e, row in zip(epochs, history, strict=True) if "val_map5" in row]
    if map_points:
        map_ax = loss_ax.twinx()
        map_ax.plot(*zip(*map_points, strict=True), color="tab:green", marker="s", label="val MAP@5")
        map_ax.set_ylabel("val MAP@5")
        map_ax.set_ylim(0, 1)
        map_ax.legend(loc="upper right")
    loss_ax.legend(loc="upper left")
    loss_ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    files.write_bytes(path, buffer.getvalue())
