"""Stage 2 (train) backbones from keras-hub: `model.backbone: hub:PRESET` -> a 0-255 pixel feature model.

PRESET is a keras-hub preset name (`dinov2_base`), a `kaggle://` handle, or a local preset directory (what
`save_to_preset` writes; how a Kaggle notebook attaches a model with internet off). The preset's image
converter gives the normalisation (and, for fixed-size ViTs, the input size); HubPixelNormalize applies it
inside the model so the backbone takes 0-255 pixels like every other backbone here.

CNN families (EfficientNet, EfficientNetV2, ResNet, ...) give a feature map [B, h, w, C] that the model's
GeM/avg pooling reduces. Token families (DINOv2, ViT) give [B, tokens, D]; TokenSplit takes the class token
([B, D], no pooling needed) or lays the patch tokens out as a grid [B, h, w, D] for mean or GeM pooling
(`model.token_pooling`). keras-hub is imported only here and only when a hub backbone is used: it is an
optional extra (`pip install tfwhale[hub]`). A saved `.keras` file holds the backbone's config and
weights, so a run folder reloads without the preset or the network.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import zipfile
from dataclasses import dataclass

import keras
from keras import ops

logger = logging.getLogger(__name__)

PREFIX = "hub:"
TOKEN_POOLINGS = ("auto", "cls", "mean", "gem")


def is_hub(backbone: str) -> bool:
    return backbone.startswith(PREFIX)


def uses_keras_hub(keras_file: str) -> bool:
    """Whether a local `.keras` file's model config names keras-hub classes (keras_hub must be imported)."""
    with zipfile.ZipFile(keras_file) as archive:
        return b'"keras_hub' in archive.read("config.json")


def check_hub(backbone: str) -> None:
    """Before any device is set up: keras-hub is installed and a local preset directory has a config."""
    if importlib.util.find_spec("keras_hub") is None:
        raise ImportError(_INSTALL)
    preset = preset_handle(backbone)
    local = "://" not in preset and ("/" in preset or os.sep in preset or os.path.exists(preset))
    if local and not os.path.isfile(os.path.join(preset, "config.json")):
        raise FileNotFoundError(
            f"{preset}: not a keras-hub preset directory (no config.json); a preset name has no '/', "
            "a local preset is the folder save_to_preset wrote"
        )


_INSTALL = (
    "model.backbone 'hub:...' needs keras-hub. Install the extra: pip install 'tfwhale[hub]' "
    "(the `tensorflow` distribution, not tensorflow-cpu; see README)"
)


def import_keras_hub():
    """keras_hub, with tfwhale's fixes applied; a clear error naming the extra when it is missing."""
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(f"{_INSTALL} ({error})") from error
    _patch_efficientnet_config(keras_hub.models.EfficientNetBackbone)
    return keras_hub


def _patch_efficientnet_config(cls) -> None:
    """keras-hub 0.32: EfficientNetBackbone.get_config drops `num_features` and `stackwise_nores_option`.

    Without them a saved model (and a preset written by save_to_preset) rebuilds a 1280-wide head conv
    and residuals everywhere, so its own weights no longer fit. Record the two arguments at construction and
    add them to the config, only where the class does not already return them (a fixed keras-hub).
    """
    if getattr(cls, "_tfwhale_patched", False):
        return
    original_init, original_get_config = cls.__init__, cls.get_config

    @functools.wraps(original_init)
    def __init__(self, *args, num_features=1280, stackwise_nores_option=None, **kwargs):
        extra = {"num_features": num_features}
        if stackwise_nores_option is not None:
            extra["stackwise_nores_option"] = list(stackwise_nores_option)
        original_init(self, *args, **kwargs, **extra)
        self._tfwhale_missing_config = extra

    @functools.wraps(original_get_config)
    def get_config(self):
        config = original_get_config(self)
        for key, value in getattr(self, "_tfwhale_missing_config", {}).items():
            config.setdefault(key, value)
        return config

    cls.__init__, cls.get_config, cls._tfwhale_patched = __init__, get_config, True


@keras.saving.register_keras_serializable(package="tfwhale")
class HubPixelNormalize(keras.layers.Layer):
    """0-255 pixels -> x * scale + offset (per channel or global), the preset image converter's rescaling.

    Computed in float32 and cast to the compute dtype (bf16 on TPU) afterwards.
    """

    def __init__(self, scale=1.0 / 255.0, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = _as_list(scale)
        self.offset = _as_list(offset)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        x = x * ops.convert_to_tensor(self.scale, "float32") + ops.convert_to_tensor(self.offset, "float32")
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


def _as_list(value) -> list[float]:
    if isinstance(value, int | float):
        return [float(value)]
    return [float(v) for v in value]


@keras.saving.register_keras_serializable(package="tfwhale")
class TokenSplit(keras.layers.Layer):
    """Transformer tokens [B, prefix + h*w, D] -> the class token [B, D] or the patch grid [B, h, w, D].

    `prefix` counts the leading non-patch tokens (class token + register tokens); part="cls" takes the first.
    """

    def __init__(self, part: str, prefix: int, grid: tuple[int, int], **kwargs):
        super().__init__(**kwargs)
        if part not in ("cls", "patches"):
            raise ValueError(f"TokenSplit part must be 'cls' or 'patches', got {part!r}")
        self.part, self.prefix, self.grid = part, int(prefix), (int(grid[0]), int(grid[1]))

    def call(self, tokens):
        if self.part == "cls":
            return tokens[:, 0, :]
        patches = tokens[:, self.prefix :, :]
        return ops.reshape(patches, (-1, self.grid[0], self.grid[1], ops.shape(tokens)[-1]))

    def compute_output_shape(self, input_shape):
        if self.part == "cls":
            return (input_shape[0], input_shape[-1])
        return (input_shape[0], *self.grid, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "part": self.part, "prefix": self.prefix, "grid": list(self.grid)}


@dataclass(frozen=True)
class HubFeatures:
    """What build_hub_backbone made: the model, and the pooling its output needs."""

    model: keras.Model
    pooling: str | None  # "gem"/"avg" over [B, h, w, C]; None: already [B, D] (a class token)
    family: str


def preset_handle(backbone: str) -> str:
    preset = backbone[len(PREFIX) :].strip()
    if not preset:
        raise ValueError("model.backbone 'hub:' needs a preset: hub:dinov2_base, hub:kaggle://... or hub:DIR")
    return preset


def build_hub_backbone(
    backbone: str, image_size: int, weights: str | None, pooling: str, token_pooling: str = "auto"
) -> HubFeatures:
    """`hub:PRESET` -> HubFeatures whose model maps [B, S, S, 3] 0-255 pixels to features.

    `weights` None builds the preset's architecture with random weights; anything else loads the preset's
    weights. `pooling` (gem/avg) applies to feature maps; `token_pooling` (auto/cls/mean/gem) to tokens.
    """
    keras_hub = import_keras_hub()
    if token_pooling not in TOKEN_POOLINGS:
        raise ValueError(f"model.token_pooling={token_pooling!r}; choose one of {', '.join(TOKEN_POOLINGS)}")
    preset = preset_handle(backbone)
    hub, config = _load(keras_hub, preset, image_size, weights)
    family = type(hub).__name__.removesuffix("Backbone")
    image = keras.Input(shape=(image_size, image_size, 3), name="hub_pixels")
    x = image
    inputs = hub.input  # DINOv2 names its input: {"images": ...}
    name, pixels = next(iter(inputs.items())) if isinstance(inputs, dict) else (None, inputs)
    height, width = pixels.shape[1:3]
    if height is not None and (height, width) != (image_size, image_size):
        logger.warning("%s takes %dx%d images: resizing %dpx in the model", preset, height, width, image_size)
        x = keras.layers.Resizing(height, width, name="hub_resize")(x)
    x = HubPixelNormalize(*_normalisation(keras_hub, preset), name="hub_normalize")(x)
    features = hub({name: x} if name else x)
    if len(features.shape) == 4:
        return HubFeatures(keras.Model(image, features, name="hub_backbone"), pooling, family)
    if len(features.shape) != 3 or height is None or "patch_size" not in config:
        raise ValueError(
            f"{preset}: {family} gives outputs of shape {features.shape}; tfwhale takes feature maps "
            "[B, h, w, C] or transformer tokens [B, tokens, D] from a fixed-size input"
        )
    split, pooling = _token_split(config, token_pooling, (height, width), features.shape[1], preset)
    logger.info("%s: %s tokens -> %s", preset, family, (pooling and f"{pooling} of the patch grid") or "cls")
    return HubFeatures(keras.Model(image, split(features), name="hub_backbone"), pooling, family)


def _load(keras_hub, preset: str, image_size: int, weights: str | None):
    """(keras-hub backbone in the global dtype policy, its config), sized for `image_size` where it can be."""
    from keras_hub.src.utils.preset_utils import get_preset_loader  # the preset's config, before any weights

    config = get_preset_loader(preset).config.get("config", {})  # config.json: {"class_name", "config"...}
    kwargs = {"dtype": keras.mixed_precision.global_policy().name}  # the preset's own dtype would win
    if "patch_size" in config and "position_embedding_shape" in config:
        # DINOv2 interpolates its position embeddings: any multiple of the patch size works
        side = token_grid_side(image_size, _pair(config["patch_size"])[0])
        kwargs["image_shape"] = (side, side, 3)
    hub = keras_hub.models.Backbone.from_preset(preset, load_weights=weights is not None, **kwargs)
    return hub, config


def _token_split(config: dict, token_pooling: str, size: tuple, n_tokens: int, preset: str):
    """(TokenSplit layer, pooling for its output: None for the class token, 'avg' or 'gem' for the grid)."""
    patch = _pair(config["patch_size"])
    grid = (size[0] // patch[0], size[1] // patch[1])
    prefix = n_tokens - grid[0] * grid[1]
    has_class_token = config.get("use_class_token", True) and prefix >= 1
    choice = token_pooling if token_pooling != "auto" else ("cls" if has_class_token else "mean")
    if prefix < 0 or (choice == "cls" and not has_class_token):
        raise ValueError(
            f"{preset}: {n_tokens} tokens for a {grid[0]}x{grid[1]} patch grid; "
            f"model.token_pooling={choice!r} needs a class token; use 'mean' or 'gem'"
        )
    if choice == "cls":
        return TokenSplit("cls", prefix, grid, name="hub_tokens"), None
    return TokenSplit("patches", prefix, grid, name="hub_tokens"), "avg" if choice == "mean" else "gem"


def _normalisation(keras_hub, preset: str) -> tuple[list[float], list[float]]:
    """The preset image converter's (scale, offset) for 0-255 pixels."""
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception as error:  # keras-hub raises ValueError/FileNotFoundError variants for a missing file
        raise ValueError(
            f"{preset}: no image converter to say how pixels are normalised ({error}). Save one next to the "
            "backbone: keras_hub.layers.ImageConverter(scale=..., offset=...).save_to_preset(DIR)"
        ) from error
    scale = [1.0] if converter.scale is None else _as_list(converter.scale)
    offset = [0.0] if converter.offset is None else _as_list(converter.offset)
    return scale, offset


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int | float):
        return int(value), int(value)
    return int(value[0]), int(value[1])


def token_grid_side(image_size: int, patch: int) -> int:
    """The side DINOv2 runs at for `image_size`: the largest multiple of the patch size that fits."""
    return max(patch, image_size // patch * patch)
