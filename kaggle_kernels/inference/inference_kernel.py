"""tfwhale inference kernel for Kaggle, internet off (as the competition required).

Attach: the competition data, the tfwhale wheel data set, the output of the training kernel (one or
more run folders) and, for ImageNet-initialised backbones, a data set with the Keras
efficientnet*_notop.h5 files. Writes /kaggle/working/submission.csv.
"""

import glob
import os
import subprocess
import sys

os.environ.setdefault("TFWHALE_PREDICT", "--tta flip")  # more options: --new-share 0.1 --blend 0.5


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

    from tfwhale.kaggle import inference_kernel

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print("submission:", inference_kernel())
