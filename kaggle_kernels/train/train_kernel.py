"""tfwhale training kernel for a Kaggle TPU notebook.

Attach: the competition data (or a records data set made by build-tfrecords) and the tfwhale wheel
data set. Writes /kaggle/working/runs/<config>/fold<k>/ (models, weights, history, OOF embeddings):
save the version and attach its output to the inference kernel.
"""

import glob
import os
import subprocess
import sys

# What to train; change these lines (or set the variables before running).
os.environ.setdefault("TFWHALE_CONFIG", "effnet_b6_768")  # or effnet_b7_768, tiny_cpu, a YAML path
# TFWHALE_FOLDS: which folds ("all", or a comma list); unset = tfwhale.kaggle.DEFAULT_FOLDS ("0")
os.environ.setdefault("TFWHALE_SET", "")  # e.g. "train.epochs=25 augment.rotation=15"


def install_tfwhale() -> None:
    """pip-install the attached wheel into the working folder (works offline) and import from there."""
    input_root = os.environ.get("KAGGLE_INPUT_ROOT", "/kaggle/input")
    working = os.environ.get("KAGGLE_WORKING_ROOT", "/kaggle/working")
    wheels = sorted(glob.glob(f"{input_root}/**/tfwhale-*.whl", recursive=True))
    if not wheels:
        sys.exit(f"attach the tfwhale wheel data set (no tfwhale-*.whl under {input_root})")
    packages = os.path.join(working, "tfwhale_packages")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    subprocess.run([*pip, "--target", packages, wheels[-1]], check=True)
    sys.path.insert(0, packages)


# The guard matters: the builder's worker processes re-import this file.
if __name__ == "__main__":
    install_tfwhale()
    import logging

    from tfwhale.kaggle import train_kernel

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print("run folder:", train_kernel())
