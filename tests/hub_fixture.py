"""Test helpers: small random-weight keras-hub backbones of each family, saved as local preset directories."""

from __future__ import annotations

import os

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Small but real configurations of each family: the blocks, strides and token layout of the presets.
EFFICIENTNET = {  # MBConv stacks, as in the efficientnet_b0 / lite presets
    "stackwise_width_coefficients": [0.25] * 3, "stackwise_depth_coefficients": [1.0] * 3,
    "stackwise_kernel_sizes": [3, 3, 5], "stackwise_num_repeats": [1, 1, 1],
    "stackwise_input_filters": [32, 16, 24], "stackwise_output_filters": [16, 24, 40],
    "stackwise_expansion_ratios": [1, 6, 6], "stackwise_squeeze_and_excite_ratios": [0.25] * 3,
    "stackwise_strides": [1, 2, 2], "stackwise_block_types": ["v1"] * 3,
    "stackwise_nores_option": [False, True, False], "num_features": 96, "dropout": 0.0,
}  # fmt: skip
EFFICIENTNETV2 = {  # fused-MBConv then MBConv, as in efficientnet2_rw_m
    "stackwise_width_coefficients": [0.25] * 3, "stackwise_depth_coefficients": [1.0] * 3,
    "stackwise_kernel_sizes": [3, 3, 3], "stackwise_num_repeats": [1, 1, 1],
    "stackwise_input_filters": [32, 32, 48], "stackwise_output_filters": [32, 48, 80],
    "stackwise_expansion_ratios": [1, 4, 4], "stackwise_squeeze_and_excite_ratios": [0.0, 0.0, 0.25],
    "stackwise_strides": [1, 2, 2], "stackwise_block_types": ["fused", "fused", "unfused"],
    "num_features": 128, "dropout": 0.0, "stem_conv_padding": "same", "include_stem_padding": False,
}  # fmt: skip
DINOV2 = {
    "patch_size": 14, "num_layers": 2, "hidden_dim": 32, "num_heads": 2, "intermediate_dim": 64,
    "num_register_tokens": 2, "image_shape": (56, 56, 3), "position_embedding_shape": (56, 56, 3),
}  # fmt: skip
VIT = {
    "image_shape": (32, 32, 3), "patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 32,
    "mlp_dim": 64,
}  # fmt: skip

FAMILIES = ("efficientnet", "efficientnetv2", "dinov2", "vit")


def make_preset(root: str, family: str, seed: int = 0) -> str:
    """A preset directory for `family` (random weights + image converter), as save_to_preset writes it."""
    import keras

    from tfwhale.nets.hub_backbone import import_keras_hub

    keras_hub = import_keras_hub()
    keras.utils.set_random_seed(seed)
    models, layers = keras_hub.models, keras_hub.layers
    scale = [1.0 / (255.0 * s) for s in IMAGENET_STD]
    offset = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    if family == "efficientnet":
        backbone = models.EfficientNetBackbone(**EFFICIENTNET)
        converter = layers.EfficientNetImageConverter(image_size=(32, 32), scale=scale, offset=offset)
    elif family == "efficientnetv2":
        backbone = models.EfficientNetBackbone(**EFFICIENTNETV2)
        converter = layers.EfficientNetImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1.0)
    elif family == "dinov2":
        backbone = models.DINOV2Backbone(**DINOV2)
        converter = layers.DINOV2ImageConverter(image_size=(56, 56), scale=scale, offset=offset)
    elif family == "vit":
        backbone = models.ViTBackbone(**VIT)
        converter = layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1.0)
    else:
        raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
    path = os.path.join(root, f"preset_{family}")
    backbone.save_to_preset(path)
    converter.save_to_preset(path)
    return path
