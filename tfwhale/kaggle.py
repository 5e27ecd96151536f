"""Kaggle kernels' side of the pipeline: find the attached data, pick the TPU backend, run the stages.

The kernel scripts in kaggle_kernels/ only install tfwhale and call `train_kernel()` or
`inference_kernel()`; everything they decide lives here, where it is tested. Roots default to
Kaggle's /kaggle/input and /kaggle/working and can be moved with KAGGLE_INPUT_ROOT and
KAGGLE_WORKING_ROOT (tests simulate the layout that way).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass

logger = logging.getLogger(__name__)

BUILD_SIZE = 512  # records built on Kaggle when the config leaves data.image_size to the records
# One fold per kernel session: B6/B7 at 768 px take hours a fold, and Kaggle's TPU sessions are capped.
# Set TFWHALE_FOLDS=1, 2, ... in later versions (the run folder resumes), or "all".
DEFAULT_FOLDS = "0"


@dataclass(frozen=True)
class KagglePaths:
    input: str
    working: str


def kaggle_paths() -> KagglePaths:
    return KagglePaths(
        os.environ.get("KAGGLE_INPUT_ROOT", "/kaggle/input"),
        os.environ.get("KAGGLE_WORKING_ROOT", "/kaggle/working"),
    )


def _walk(root: str, max_depth: int = 4):
    base = root.rstrip("/").count("/")
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if folder.count("/") - base >= max_depth:
            dirs.clear()
        yield folder, files


def find_records(root: str) -> str | None:
    """The first attached folder holding a finished build (manifest.json)."""
    from tfwhale.contracts.records import MANIFEST_NAME

    return next((folder for folder, names in _walk(root) if MANIFEST_NAME in names), None)


def find_competition_data(root: str) -> str | None:
    """The attached competition data: a folder with train.csv next to train_images/."""
    for folder, files in _walk(root, max_depth=2):
        if "train.csv" in files and os.path.isdir(os.path.join(folder, "train_images")):
            return folder
    return None


def find_runs(root: str) -> list[str]:
    """Attached tfwhale.train run folders (they hold fold*/run.json or full/run.json)."""
    found = []
    from tfwhale.contracts.run_folder import FULL, RUN_JSON, val_fold_of

    for folder, names in _walk(root, max_depth=5):
        name = os.path.basename(folder)
        if RUN_JSON in names and (name == FULL or val_fold_of(name) is not None):
            parent = os.path.dirname(folder)
            if parent not in found:
                found.append(parent)
    return found


def gcs_path(local_dataset_dir: str) -> str:
    """The gs:// path of an attached data set (TPU workers of TF's TPUStrategy read only GCS)."""
    from kaggle_datasets import KaggleDatasets  # only inside Kaggle kernels

    return KaggleDatasets().get_gcs_path(os.path.basename(local_dataset_dir.rstrip("/")))


def tpu_present() -> bool:
    """A TPU VM exposes /dev/accel*; older TPU nodes announce themselves with TPU_NAME."""
    return bool(os.environ.get("TPU_NAME")) or any(n.startswith("accel") for n in _safe_listdir("/dev"))


def _safe_listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def choose_backend(tpu: bool) -> str:
    """JAX on Kaggle's TPU image (its TensorFlow is a CPU build), TF where tensorflow-tpu is installed."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    if not tpu:
        return "tensorflow"
    import tensorflow as tf

    has_tf_tpu = hasattr(tf, "tpu") and tf.sysconfig.get_build_info().get("is_tpu_build", False)
    return "tensorflow" if has_tf_tpu else "jax"


def install_imagenet_weights(root: str) -> list[str]:
    """Copy attached ImageNet weights where the backbones look for them (inference kernels are offline).

    EfficientNet *_notop.h5 files go to the Keras cache; converted EfficientNet-Lite weights
    (efficientnet_lite*_imagenet-*.npz, from ~/.cache/tfwhale after one run with the `lite` extra) go to
    tfwhale's cache.
    """
    from tfwhale.nets.model import keras_cache_dir
    from tfwhale.nets.pretrained_lite import cache_dir

    copied = []
    for folder, files in _walk(root):
        for name in sorted(files):
            if name.startswith("efficientnet") and name.endswith("_notop.h5"):
                target = keras_cache_dir()
            elif name.startswith("efficientnet_lite") and name.endswith(".npz") and "_imagenet-" in name:
                target = cache_dir()
            else:
                continue
            os.makedirs(target, exist_ok=True)
            shutil.copy(os.path.join(folder, name), os.path.join(target, name))
            copied.append(name)
    if copied:
        logger.info("ImageNet weights placed in the Keras / tfwhale caches: %s", ", ".join(copied))
    return copied


def _run(module_main, args: list[str], shown: str) -> None:
    logger.info("$ %s %s", shown, shlex.join(args))
    code = module_main(args)
    if code not in (0, 3):  # 3: the builder skipped some bad images and says which in rejects.csv
        raise SystemExit(f"{shown} failed with exit code {code}")


# LOCAL FEATURES: Kaggle's kernels build and predict without them unless TFWHALE_BUILD / TFWHALE_PREDICT
# ask for them: at the competition's 79k photos they are ~9.8 GiB (BENCHMARKS.md, local features in the
# builder) and the re-rank costs ~1 s a query on CPU over 51k OOF + 28k test queries, past a kernel's
# time limit. Set TFWHALE_BUILD="--local-features" and TFWHALE_PREDICT="--rerank local" to opt in.


def _builder_main(args: list[str]) -> int:
    """build-tfrecords as its own process: the builder imports tfwhale, so tfwhale does not import it."""
    return subprocess.call([sys.executable, "-m", "tfrecords_builder", *args])


def _build_records(data: str, out: str, size: int, extra: list[str]) -> str:
    boxes = os.path.join(data, "boxes.csv")
    args = ["--data", data, "--out", out, "--size", str(size), *extra]
    if os.path.exists(boxes) and "--boxes" not in extra:
        args += ["--boxes", boxes]
    if not any(a in extra for a in ("--local-features", "--no-local-features")):
        args.append("--no-local-features")  # see LOCAL FEATURES above
    _run(_builder_main, args, "build-tfrecords")
    return out


def _env_list(name: str) -> list[str]:
    return shlex.split(os.environ.get(name, ""))


def attached_or_built_records(paths: KagglePaths, size_of) -> str:
    """An attached build if there is one, else one built now from the competition data.

    `size_of()` gives the image size, asked only when a build is needed.
    """
    records = find_records(paths.input)
    if records is not None:
        return records
    data = find_competition_data(paths.input)
    if data is None:
        raise SystemExit(f"no records (manifest.json) and no competition data under {paths.input}")
    out = os.path.join(paths.working, "records")
    return _build_records(data, out, size_of(), _env_list("TFWHALE_BUILD"))


def train_kernel() -> str:
    """Train with TFWHALE_CONFIG (default effnet_b6_768) on the attached records or competition data."""
    paths = kaggle_paths()
    tpu = tpu_present()
    os.environ["KERAS_BACKEND"] = choose_backend(tpu)
    # Internet may be off here too; the wheel is installed without its extras (no Lite .pth packages).
    install_imagenet_weights(paths.input)
    from tfwhale import train
    from tfwhale.core import config

    cfg_name = os.environ.get("TFWHALE_CONFIG", "effnet_b6_768")
    sets = _env_list("TFWHALE_SET")
    records = attached_or_built_records(
        paths, lambda: config.load_config(cfg_name, sets).data.image_size or BUILD_SIZE
    )
    if tpu and os.environ["KERAS_BACKEND"] == "tensorflow" and records.startswith(paths.input):
        records = gcs_path(records)  # TPUStrategy workers read only gs://
    run_dir = os.path.join(paths.working, "runs", cfg_name)
    args = ["--config", cfg_name, "--records", records, "--out", run_dir]
    args += ["--folds", os.environ.get("TFWHALE_FOLDS") or DEFAULT_FOLDS] + (["--tpu"] if tpu else [])
    for item in sets:
        args += ["--set", item]
    _run(train.main, args, "python -m tfwhale.train")
    return run_dir


def _trained_image_size(run_dir: str) -> int:
    from tfwhale.contracts.run_folder import RUN_JSON, read_run_record

    for name in sorted(os.listdir(run_dir)):
        if os.path.exists(os.path.join(run_dir, name, RUN_JSON)):
            return read_run_record(os.path.join(run_dir, name)).records.image_size
    raise SystemExit(f"{run_dir}: no finished fold (run.json)")


def predict_args(runs: list[str], records: str, out: str, extra: list[str]) -> list[str]:
    """predict's arguments in the inference kernel: the user's TFWHALE_PREDICT last, --rerank none unless
    it names one (see LOCAL FEATURES above)."""
    args = ["--runs", *runs, "--records", records, "--out", out, *extra]
    if not any(a == "--rerank" or a.startswith("--rerank=") for a in extra):
        args += ["--rerank", "none"]
    return args


def inference_kernel() -> str:
    """Offline: attached weights + runs (+ records or competition data) -> /kaggle/working/submission.csv."""
    paths = kaggle_paths()
    install_imagenet_weights(paths.input)
    from tfwhale import predict

    runs = find_runs(paths.input)
    if not runs:
        raise SystemExit(f"no run folders (fold*/run.json) under {paths.input}: attach a training output")
    # A build made now from the same competition data with the same seed has the runs' folds and labels;
    # predict checks the label maps and refuses records that differ.
    records = attached_or_built_records(paths, lambda: _trained_image_size(runs[0]))
    out = os.path.join(paths.working, "predict")
    args = predict_args(runs, records, out, _env_list("TFWHALE_PREDICT"))
    sample = os.path.join(find_competition_data(paths.input) or "", "sample_submission.csv")
    if os.path.exists(sample):
        args += ["--sample-submission", sample]
    _run(predict.main, args, "python -m tfwhale.predict")
    submission = os.path.join(paths.working, "submission.csv")
    shutil.copy(os.path.join(out, "submission.csv"), submission)
    from tfwhale.inference.submission import PredictError, check_submission_text

    try:  # what Kaggle will score: every row must split back into its labels
        with open(submission, encoding="utf-8") as f:
            check_submission_text(f.read(), submission)
    except PredictError as err:
        raise SystemExit(str(err)) from None
    logger.info("wrote %s", submission)
    return submission
