"""Day-one gallery, model side: a pretrained backbone with no training, saved as a finished run folder.

ImageNet backbone -> global average pooling -> L2 normalisation, and nothing else: a randomly initialised
neck (the trained recipe's Dense + BatchNorm) would only project the ImageNet features at random and throw
information away. The folder holds what the trainer leaves (embedding.keras, config.yaml, run.json
written last), so the query path's recorded_fold and load_embedding_model take it like a trained fold.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass

from tfwhale.contracts.records import Manifest
from tfwhale.contracts.run_folder import CONFIG_NAME, EMBEDDING_MODEL, FULL, RUN_JSON, RecordsRef, RunRecord
from tfwhale.core import files
from tfwhale.core.config import load_config, save_config

DEFAULT_BACKBONE = "EfficientNetLite0"
RUN_DIR = "run"  # in the gallery folder


class BackboneError(RuntimeError):
    """The pretrained backbone cannot be had; the message says what to install."""


@dataclass(frozen=True)
class UntrainedRun:
    run_dir: str
    fold: str  # the one fold folder's name ("full": no fold was held out, nothing was trained)
    run_json_sha256: str
    embedding_dim: int
    model: object  # the Keras embedding model, as saved


def describe(backbone: str) -> str:
    """How pages and reports name the backbone: 'ImageNet Lite0', or the hub preset."""
    if backbone.startswith("EfficientNetLite"):
        return f"ImageNet Lite{backbone.removeprefix('EfficientNetLite')}"
    return backbone.removeprefix("hub:")


def build_embedding_model(backbone: str, image_size: int):
    """[B, S, S, 3] 0-255 pixels -> L2-normalised pooled features; BackboneError naming what is missing."""
    import keras

    from tfwhale.nets.hub_backbone import build_hub_backbone, is_hub
    from tfwhale.nets.layers import L2Normalize
    from tfwhale.nets.model import build_backbone
    from tfwhale.nets.pretrained_lite import LiteWeightsError

    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    try:
        if is_hub(backbone):
            hub = build_hub_backbone(backbone, image_size, "preset", "avg")
            features, pooling = hub.model(image), hub.pooling
        else:
            features, pooling = build_backbone(backbone, image_size, "imagenet")(image), "avg"
    except LiteWeightsError as err:
        raise BackboneError(f"{err}; the day-one gallery needs the `lite` extra for {backbone}") from None
    except ImportError as err:
        raise BackboneError(f"{backbone}: {err}") from None
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features) if pooling else features
    embedding = L2Normalize(name="embedding", dtype="float32")(pooled)
    return keras.Model(image, embedding, name="tfwhale_embedding")


def save_untrained_run(gallery_dir: str, records: Manifest, backbone: str, flip: bool, model) -> UntrainedRun:
    """GALLERY/run/full/: embedding.keras, config.yaml, then run.json (a RunRecord with epochs 0)."""
    run_dir = files.join(gallery_dir, RUN_DIR)
    fold_dir = files.join(run_dir, FULL)
    files.makedirs(fold_dir)
    run_json = files.join(fold_dir, RUN_JSON)
    if files.exists(run_json):  # an older run.json must not vouch for the model written next
        files.remove(run_json)
    dim = int(model.output.shape[-1])
    with files.written_via_local(files.join(fold_dir, EMBEDDING_MODEL)) as local:
        model.save(local)
    config = load_config(None, _config_overrides(backbone, records.image_size, dim, flip))
    save_config(config, files.join(fold_dir, CONFIG_NAME))
    record = RunRecord(
        fold=FULL,
        val_fold=None,
        train_folds=list(range(records.n_folds)),
        epochs=0,
        records=RecordsRef(
            records.root, records.sha256, records.labels_sha256, records.n_folds, records.image_size
        ),
        versions=_versions(),
        extra={"made_by": "tfwhale.gallery", "trained": False, "backbone": describe(backbone)},
    )
    files.write_json(run_json, record.to_json())
    sha = hashlib.sha256(files.read_text(run_json).encode()).hexdigest()
    return UntrainedRun(run_dir, FULL, sha, dim, model)


def _config_overrides(backbone: str, image_size: int, dim: int, flip: bool) -> list[str]:
    """The fold's config says what the model is; flip: whether mirrored photos count as one individual."""
    return [
        f"data.image_size={image_size}",
        f"model.backbone={backbone}",
        "model.weights=imagenet",
        "model.pooling=avg",
        f"model.embedding_dim={dim}",
        f"augment.flip={'true' if flip else 'false'}",
        f"predict.tta_flip={'true' if flip else 'false'}",
    ]


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    from tfwhale import __version__

    return {"tfwhale": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version()}  # fmt: skip
