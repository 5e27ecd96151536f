"""Test helpers: tiny finished run folders and synthetic-photo records, as train and build write them."""

from __future__ import annotations

import csv

import keras
import numpy as np
import yaml

from tfwhale.contracts.records import Manifest
from tfwhale.core import files
from tfwhale.nets.model import build_models


def csv_rows(path: str) -> list[dict[str, str]]:
    """The rows of a CSV a command wrote (submission.csv, decisions, ...), as dicts by header."""
    with open(path) as f:
        return list(csv.DictReader(f))


def make_run(
    run_dir: str, manifest: Manifest, folds=("fold0", "fold1"), dim: int = 8, seed: int = 0,
    nan: bool = False, backbone: str = "TinyConvNet",
) -> str:  # fmt: skip
    """A run folder as tfwhale.train leaves it, with untrained models (fast: no training; TinyConvNet).

    nan=True poisons the neck so every embedding is NaN.
    """
    for offset, name in enumerate(folds):
        keras.utils.set_random_seed(seed + offset)
        train_model, embedding_model = build_models(
            backbone=backbone, weights=None, image_size=manifest.image_size,
            n_classes=len(manifest.individuals), embedding_dim=dim, pooling="avg", dropout=0.0,
        )  # fmt: skip
        if nan:
            kernel = train_model.get_layer("neck_dense").kernel
            kernel.assign(np.full(kernel.shape, np.nan, np.float32))
        path = files.join(run_dir, name)
        files.makedirs(path)
        embedding_model.save(files.join(path, "embedding.keras"))
        train_model.save(files.join(path, "model.keras"))
        files.write_text(files.join(path, "config.yaml"), yaml.safe_dump({"model": {"embedding_dim": dim}}))
        val_fold = None if name == "full" else int(name.removeprefix("fold"))
        info = {
            "status": "finished", "fold": name, "val_fold": val_fold,
            "train_folds": [f for f in range(manifest.n_folds) if f != val_fold], "best": {}, "seed": seed,
            "epochs": 1,
            "records": {"root": manifest.root, "manifest_sha256": manifest.sha256,
                        "labels_sha256": manifest.labels_sha256, "n_folds": manifest.n_folds,
                        "image_size": manifest.image_size},
        }  # fmt: skip
        files.write_json(files.join(path, "run.json"), info)
    return run_dir


def build_synthetic_records(
    root, individuals: int = 16, size: int = 32, seed: int = 0, local_features: bool = False
) -> tuple[str, str]:
    """synthetic data set -> build-tfrecords (2 folds, detector boxes): (data folder, records folder).
    Without local features unless asked (predict then ranks by the embedding alone, as these tests
    expect; tests/test_predict_rerank.py covers the fused path)."""
    from tfrecords_builder.cli import main as build_main
    from tfwhale.synthetic.dataset import generate

    data, out = str(root / "synthetic"), str(root / "records")
    generate(data, individuals=individuals, seed=seed, image_size=64, progress=False)
    argv = ["--data", data, "--boxes", f"{data}/boxes.csv", "--size", str(size), "--out", out]
    argv += ["--local-features" if local_features else "--no-local-features"]
    assert build_main([*argv, "--folds", "2", "--workers", "1", "-q"]) == 0
    return data, out
