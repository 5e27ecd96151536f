"""The local-feature hand-off (extraction -> storage -> matching): one photo's keypoints and descriptors,
and the compact file that holds a set of photos' features.

Both the builder (training and test photos) and identify/serve (new photos) produce `LocalFeatures`;
the matcher reads them. On disk a set of photos is one .npz: descriptors uint8 (RootSIFT quantised to
0..255, 128 bytes a keypoint), keypoints float16 (x, y, size, angle: 8 bytes a keypoint), and an
offsets array that cuts the flat arrays into photos. Its sha256 goes into manifests.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 1
KEYPOINT_FIELDS = ("x", "y", "size", "angle")  # x, y, size in pixels of the matching image (image_size)
DESCRIPTOR_DIM = 128


class LocalFeaturesError(ValueError):
    """A local-feature file or array that does not follow this contract."""


@dataclass(frozen=True)
class LocalFeatures:
    """One photo's features. keypoints: float16 (n, 4) as KEYPOINT_FIELDS; descriptors: uint8 (n, 128);
    image_size: (width, height) of the matching image: the crop resized to the match size, whose frame
    the keypoints are in (float16 holds its <= 2048 px to within 1 px; multiply by crop width /
    image_size[0] to draw them on the full crop)."""

    keypoints: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        check_arrays(self.keypoints, self.descriptors, "LocalFeatures")

    def __len__(self) -> int:
        return len(self.descriptors)

    @property
    def xy(self) -> np.ndarray:
        """Keypoint positions, float32 (n, 2)."""
        return self.keypoints[:, :2].astype(np.float32)

    @property
    def nbytes(self) -> int:
        return int(self.keypoints.nbytes + self.descriptors.nbytes)


def check_arrays(keypoints: np.ndarray, descriptors: np.ndarray, where: str) -> None:
    """LocalFeaturesError naming `where` unless the arrays have this contract's dtypes and shapes."""
    if keypoints.dtype != np.float16 or keypoints.ndim != 2 or keypoints.shape[1] != len(KEYPOINT_FIELDS):
        raise LocalFeaturesError(f"{where}: keypoints must be float16 (n, 4), got {keypoints.dtype} "
                                 f"{keypoints.shape}")  # fmt: skip
    if descriptors.dtype != np.uint8 or descriptors.ndim != 2 or descriptors.shape[1] != DESCRIPTOR_DIM:
        raise LocalFeaturesError(f"{where}: descriptors must be uint8 (n, {DESCRIPTOR_DIM}), got "
                                 f"{descriptors.dtype} {descriptors.shape}")  # fmt: skip
    if len(keypoints) != len(descriptors):
        raise LocalFeaturesError(f"{where}: {len(keypoints)} keypoints but {len(descriptors)} descriptors")


# A photo with no features (unreadable, or no keypoints found): no inliers, no votes, a row all the same
NO_FEATURES = LocalFeatures(np.zeros((0, 4), np.float16), np.zeros((0, DESCRIPTOR_DIM), np.uint8), (0, 0))


@dataclass(frozen=True)
class FeatureSet:
    """Many photos' features in flat arrays: photo i owns rows offsets[i]:offsets[i + 1]."""

    names: tuple[str, ...]
    offsets: np.ndarray  # int64 (n_photos + 1,)
    keypoints: np.ndarray  # float16 (total, 4)
    descriptors: np.ndarray  # uint8 (total, 128)
    image_sizes: np.ndarray  # int32 (n_photos, 2): width, height

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> LocalFeatures:
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        width, height = (int(v) for v in self.image_sizes[index])
        return LocalFeatures(self.keypoints[start:stop], self.descriptors[start:stop], (width, height))

    @property
    def photos_without_keypoints(self) -> int:
        """How many photos gave no keypoints (SIFT found none in a blank or tiny crop)."""
        return int(np.count_nonzero(np.diff(self.offsets) == 0))

    @property
    def photo_of_row(self) -> np.ndarray:
        """The photo index of every descriptor row, int32 (total,)."""
        return np.repeat(np.arange(len(self.names), dtype=np.int32), np.diff(self.offsets))

    @classmethod
    def from_photos(cls, names: list[str], features: list[LocalFeatures]) -> FeatureSet:
        if len(names) != len(features):
            raise LocalFeaturesError(f"{len(names)} names but {len(features)} feature sets")
        counts = [len(f) for f in features]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        empty_k, empty_d = np.zeros((0, 4), np.float16), np.zeros((0, DESCRIPTOR_DIM), np.uint8)
        return cls(
            names=tuple(names),
            offsets=offsets,
            keypoints=np.concatenate([empty_k, *(f.keypoints for f in features)]),
            descriptors=np.concatenate([empty_d, *(f.descriptors for f in features)]),
            image_sizes=np.asarray([f.image_size for f in features], np.int32).reshape(-1, 2),
        )


def save_feature_set(path: str, features: FeatureSet) -> str:
    """Write `features` to `path` (.npz, uncompressed: uint8 descriptors barely compress) through a
    temporary name, so a half-written file is never taken for whole. Returns the file's sha256."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        format_version=np.int32(FORMAT_VERSION),
        names=np.asarray(features.names, dtype=str),
        offsets=features.offsets.astype(np.int64),
        keypoints=features.keypoints,
        descriptors=features.descriptors,
        image_sizes=features.image_sizes.astype(np.int32),
    )
    data = buffer.getvalue()
    from tfwhale.core import files  # here: it imports TensorFlow, which matching alone must not need

    files.write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_feature_set(path: str, sha256: str | None = None) -> FeatureSet:
    """Read a file save_feature_set wrote; LocalFeaturesError naming the file when it is not one, or when
    `sha256` is given and differs (a file changed or cut short since its manifest was written)."""
    from tfwhale.core import files  # here: it imports TensorFlow, which matching alone must not need

    data = files.read_bytes(path)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise LocalFeaturesError(f"{path}: sha256 differs from the manifest's; rebuild the local features")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError) as error:
        raise LocalFeaturesError(f"{path}: not a local-feature file ({error})") from error
    missing = {"format_version", "names", "offsets", "keypoints", "descriptors", "image_sizes"} - set(arrays)
    if missing:
        raise LocalFeaturesError(f"{path}: missing arrays {sorted(missing)}")
    if int(arrays["format_version"]) != FORMAT_VERSION:
        raise LocalFeaturesError(f"{path}: format version {int(arrays['format_version'])}, this code reads "
                                 f"{FORMAT_VERSION}")  # fmt: skip
    check_arrays(arrays["keypoints"], arrays["descriptors"], path)
    offsets, names = arrays["offsets"].astype(np.int64), tuple(arrays["names"].tolist())
    if len(offsets) != len(names) + 1 or offsets[0] != 0 or offsets[-1] != len(arrays["descriptors"]):
        raise LocalFeaturesError(f"{path}: offsets do not cut {len(arrays['descriptors'])} rows into "
                                 f"{len(names)} photos")  # fmt: skip
    if np.any(np.diff(offsets) < 0) or arrays["image_sizes"].shape != (len(names), 2):
        raise LocalFeaturesError(f"{path}: offsets decrease or image_sizes is not (photos, 2)")
    return FeatureSet(names, offsets, arrays["keypoints"], arrays["descriptors"], arrays["image_sizes"])
