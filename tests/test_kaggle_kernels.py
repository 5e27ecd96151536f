"""Both Kaggle kernels on CPU in a simulated /kaggle/input + /kaggle/working layout, from a built wheel."""

import csv
import os
import shutil
import subprocess
import sys

import pytest

from tfwhale import kaggle
from tfwhale.synthetic import dataset as synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "kaggle_kernels")


@pytest.fixture(scope="module")
def kaggle_input(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("kaggle")
    data = root / "input" / "happy-whale-and-dolphin"
    synthetic.generate(str(data), individuals=40, min_photos=4, image_size=160, seed=5, progress=False)
    wheel_dir = root / "input" / "tfwhale-wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheel_dir),
            ROOT,
        ],
        check=True,
        capture_output=True,
    )
    return str(root)


def _kernel(script: str, input_root: str, working: str, **env: str) -> subprocess.CompletedProcess:
    os.makedirs(working, exist_ok=True)
    environ = dict(os.environ, KAGGLE_INPUT_ROOT=input_root, KAGGLE_WORKING_ROOT=working, **env)
    return subprocess.run(
        [sys.executable, os.path.join(KERNELS, script)],
        capture_output=True, text=True, timeout=900, env=environ, cwd=working,
    )  # fmt: skip


@pytest.mark.slow  # ~90 s alone: both kernels end to end on CPU; `python3 dev.py test --slow`, and CI
def test_train_then_inference_kernels(kaggle_input, tmp_path):
    input_root = os.path.join(kaggle_input, "input")
    trained = _kernel(
        "train/train_kernel.py", input_root, str(tmp_path / "train_working"),
        TFWHALE_CONFIG="tiny_cpu", TFWHALE_FOLDS="0,1", TFWHALE_BUILD="--folds 2",
        TFWHALE_SET="train.epochs=2 data.image_size=64",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = tmp_path / "train_working" / "runs" / "tiny_cpu"
    assert (run_dir / "fold0" / "run.json").exists() and (run_dir / "fold1" / "embedding.keras").exists()
    # The kernel imported tfwhale from the wheel it installed, not from this checkout.
    assert (
        tmp_path / "train_working" / "tfwhale_packages" / "tfwhale" / "configs" / "tiny_cpu.yaml"
    ).exists()

    # The inference kernel gets the training output attached as a data set, and no internet.
    shutil.copytree(run_dir, os.path.join(input_root, "tfwhale-train-output", "runs", "tiny_cpu"))
    working = str(tmp_path / "infer_working")
    inferred = _kernel(
        "inference/inference_kernel.py", input_root, working,
        TFWHALE_BUILD="--folds 2", TFWHALE_PREDICT="--examples 0",
    )  # fmt: skip
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    with open(os.path.join(working, "submission.csv")) as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(input_root, "happy-whale-and-dolphin", "sample_submission.csv")) as f:
        expected = [row["image"] for row in csv.DictReader(f)]
    assert [row["image"] for row in rows] == expected
    assert all(len(set(row["predictions"].split())) == 5 for row in rows)


def test_finders_on_a_kaggle_layout(tmp_path):
    comp = tmp_path / "happy-whale-and-dolphin"
    (comp / "train_images").mkdir(parents=True)
    (comp / "train.csv").write_text("image,species,individual_id\n")
    (tmp_path / "my-records" / "rec512").mkdir(parents=True)
    (tmp_path / "my-records" / "rec512" / "manifest.json").write_text("{}")
    (tmp_path / "out" / "runs" / "b6" / "fold0").mkdir(parents=True)
    (tmp_path / "out" / "runs" / "b6" / "fold0" / "run.json").write_text("{}")
    assert kaggle.find_competition_data(str(tmp_path)) == str(comp)
    assert kaggle.find_records(str(tmp_path)) == str(tmp_path / "my-records" / "rec512")
    assert kaggle.find_runs(str(tmp_path)) == [str(tmp_path / "out" / "runs" / "b6")]
    assert kaggle.find_records(str(comp)) is None


def test_imagenet_weights_go_to_the_keras_cache(tmp_path, monkeypatch):
    (tmp_path / "keras_home").mkdir()  # Keras itself falls back to /tmp/.keras when KERAS_HOME is absent
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    attached = tmp_path / "input" / "effnet-weights"
    attached.mkdir(parents=True)
    (attached / "efficientnetb6_notop.h5").write_bytes(b"weights")
    (attached / "notes.txt").write_text("not a weight file")
    lite = "efficientnet_lite0_imagenet-efficientnet-lite0-57934424.npz"
    (attached / lite).write_bytes(b"converted")
    monkeypatch.setenv("TFWHALE_CACHE", str(tmp_path / "tfwhale_cache"))
    assert kaggle.install_imagenet_weights(str(tmp_path / "input")) == [lite, "efficientnetb6_notop.h5"]
    assert (tmp_path / "keras_home" / "models" / "efficientnetb6_notop.h5").read_bytes() == b"weights"
    assert (tmp_path / "tfwhale_cache" / lite).read_bytes() == b"converted"


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert kaggle.choose_backend(tpu=False) == "tensorflow"
    # This TensorFlow is a CPU build, like the one on Kaggle's TPU image: JAX drives the TPU there.
    assert kaggle.choose_backend(tpu=True) == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert kaggle.choose_backend(tpu=True) == "tensorflow"


def test_kernels_leave_local_features_out_unless_asked(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(kaggle, "_run", lambda main, args, shown: calls.append(args))
    kaggle._build_records(str(tmp_path), str(tmp_path / "out"), 224, [])
    kaggle._build_records(str(tmp_path), str(tmp_path / "out"), 224, ["--local-features"])
    assert calls[0][-1] == "--no-local-features"
    assert "--no-local-features" not in calls[1] and "--local-features" in calls[1]
    assert kaggle.predict_args(["r"], "rec", "o", [])[-2:] == ["--rerank", "none"]
    assert kaggle.predict_args(["r"], "rec", "o", ["--rerank", "local"]).count("--rerank") == 1
    assert kaggle.predict_args(["r"], "rec", "o", ["--rerank=local"])[-1] == "--rerank=local"
