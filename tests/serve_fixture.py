"""Test helpers for the catalogue app: a tiny finished predict gallery and synthetic upload photos."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def serve_gallery(tmp_path_factory):
    """(synthetic data folder, predict output): untrained two-fold TinyConvNet run, flip TTA."""
    from tests.run_fixture import build_synthetic_records, make_run
    from tfwhale import predict
    from tfwhale.contracts.records import load_manifest

    root = tmp_path_factory.mktemp("serve")
    data, records = build_synthetic_records(root, individuals=12)
    run_dir = make_run(str(root / "run"), load_manifest(records), dim=16)
    out = str(root / "predict")
    argv = ["--runs", run_dir, "--records", records, "--out", out, "--tta", "flip", "--examples", "0"]
    assert predict.main(argv) == 0
    return data, out


def photo_bytes(seed: int, size: int = 96, fmt: str = "JPEG") -> bytes:
    """A random-looking photo no gallery photo resembles (its own 'individual')."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((size, size), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, fmt, quality=95)
    return out.getvalue()


def second_photo(data: bytes) -> bytes:
    """Another photo of the same animal: mirrored and re-encoded (flip TTA makes its embedding the same)."""
    image = Image.open(io.BytesIO(data)).transpose(Image.FLIP_LEFT_RIGHT)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()
