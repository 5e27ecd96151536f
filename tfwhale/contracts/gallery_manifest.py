"""The gallery hand-off (predict -> identify, serve): gallery.json names everything a gallery is made of.

predict writes it last, after every file it names; identify and the catalogue app read only it (and
the files it names, checked by sha256), never report.json, which is for people. It carries the crop
settings whole (new photos are cropped as the gallery was), the fold models, the ranking options and the
threshold policy (made once, by predict's OOF tuning or a fixed value).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tfwhale.core import files
from tfwhale.imaging.photo_crop import ImageSettings

GALLERY_NAME = "gallery.json"
FORMAT_VERSION = 2  # 2: image settings whole, threshold policy, class centres in the arrays file


class GalleryError(ValueError):
    """A predict output folder that holds no usable gallery."""


@dataclass(frozen=True)
class ThresholdPolicy:
    """Where new_individual goes: one similarity threshold, or one per species tuned on its own.

    Made once (predict's OOF tuning, or a fixed value) and handed on whole: every answer of a gallery
    takes its threshold from here."""

    value: float
    per_species: dict[str, float] = field(default_factory=dict)
    source: str = "fixed"  # "fixed", "auto (OOF ...)", with ", calibrated" when moved onto the test scale
    separation_auc: float | None = None  # known/new ROC AUC of OOF top-1 similarity (None: not tuned)
    warnings: tuple[str, ...] = ()  # why it may not hold on new photos

    def threshold_for(self, species: str | None) -> float:
        """The species' own threshold if it had one, else the global one."""
        return self.per_species.get(species, self.value) if species else self.value

    def fixed(self, value: float) -> ThresholdPolicy:
        """The policy a user's --threshold makes: that value for every species."""
        return ThresholdPolicy(float(value), {}, "fixed (given)")


@dataclass(frozen=True)
class GalleryRun:
    """One run folder of the gallery: its fold models (name -> sha256 of their run.json) and weight."""

    run_dir: str
    weight: float
    embedding_dim: int
    folds: dict[str, str]


RERANKS = ("none", "local")


@dataclass(frozen=True)
class LocalRerank:
    """What a gallery answers with when it re-ranks by local features (issue 24): its photos' features
    (contracts.local_features FeatureSet, rows = GalleryArrays.train_names in order, checked by sha256),
    the settings they were made and are matched with (matching.features.SiftSettings, pairs.PairSettings,
    aggregate.RerankSettings fields) and the three isotonic calibrations (matching.rerank.Calibrations).
    The threshold policy of such a gallery is on the fused probability."""

    features_file: str  # in the gallery folder
    features_sha256: str
    calibrations: dict[str, Any]
    sift: dict[str, Any] = field(default_factory=dict)
    pairs: dict[str, Any] = field(default_factory=dict)
    rerank: dict[str, Any] = field(default_factory=dict)
    photos_root: str = ""  # where the gallery's photo names are found (for drawing matches); "" unknown


@dataclass(frozen=True)
class GalleryManifest:
    runs: tuple[GalleryRun, ...]
    flip_tta: bool
    options: dict[str, Any]  # retrieval.ranking.RankOptions fields
    threshold: ThresholdPolicy
    image: ImageSettings  # the records' crop settings: new photos are cropped the same way
    records_root: str
    records_manifest_sha256: str
    embeddings_file: str  # in the same folder (contracts.gallery_arrays)
    embeddings_sha256: str
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    rerank: str = "none"  # "local": fused with local features (see LocalRerank); older galleries: none
    local: LocalRerank | None = None
    # rerank "local": `threshold` is on the fused P; this one is on the embedding similarity, for answers
    # made without local features (the catalogue app ranks its grown gallery by the embedding alone)
    embedding_threshold: ThresholdPolicy | None = None

    def __post_init__(self) -> None:
        if self.rerank not in RERANKS:
            raise GalleryError(f"rerank must be one of {RERANKS}, got {self.rerank!r}")
        if self.rerank == "local" and self.local is None:
            raise GalleryError("rerank 'local' without the local features section")

    @property
    def image_size(self) -> int:
        return self.image.size


def write_gallery_manifest(out_dir: str, manifest: GalleryManifest) -> str:
    """Atomically write gallery.json; call it after every file it names is written."""
    path = files.join(out_dir, GALLERY_NAME)
    body = asdict(manifest)
    body["threshold"]["warnings"] = list(manifest.threshold.warnings)
    if manifest.embedding_threshold is not None:
        body["embedding_threshold"]["warnings"] = list(manifest.embedding_threshold.warnings)
    files.write_json(path, {"status": "finished", **body})
    return path


def remove_gallery_manifest(out_dir: str) -> None:
    """A rerun first takes the old marker away: its files are about to change."""
    path = files.join(out_dir, GALLERY_NAME)
    if files.exists(path):
        files.remove(path)


def load_gallery_manifest(out_dir: str, check_files: bool = True) -> GalleryManifest:
    """gallery.json of a finished predict output; GalleryError naming the file when it is not one."""
    path = files.join(out_dir, GALLERY_NAME)
    if not files.exists(path):
        raise GalleryError(f"{out_dir}: no finished predict output here ({path} missing); run predict first")
    try:
        body = files.read_json(path)
        if body.pop("status", None) != "finished":
            raise GalleryError(f"{path}: not finished; run predict again")
        version = body.get("format_version", 1)
        if version > FORMAT_VERSION:
            raise GalleryError(f"{path}: written by a newer tfwhale (format {version})")
        manifest = _from_json(_upgrade_v1(body) if version == 1 else body)
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, GalleryError):
            raise
        raise GalleryError(f"{path}: not a gallery manifest tfwhale can read ({err})") from None
    if check_files:
        embeddings = files.join(out_dir, manifest.embeddings_file)
        if not files.exists(embeddings) or files.sha256(embeddings) != manifest.embeddings_sha256:
            raise GalleryError(
                f"{embeddings}: missing or changed since predict wrote {path}; run predict again"
            )
        if manifest.local is not None:
            features = files.join(out_dir, manifest.local.features_file)
            if not files.exists(features) or files.sha256(features) != manifest.local.features_sha256:
                raise GalleryError(f"{features}: missing or changed since {path} was written; make it again")
    return manifest


def _from_json(body: dict[str, Any]) -> GalleryManifest:
    return GalleryManifest(
        **{
            **body,
            "runs": tuple(GalleryRun(**run) for run in body["runs"]),
            "threshold": _policy(body["threshold"]),
            "image": ImageSettings(**body["image"]),
            "local": LocalRerank(**body["local"]) if body.get("local") else None,
            "embedding_threshold": _policy(body["embedding_threshold"])
            if body.get("embedding_threshold")
            else None,
        }
    )


def _policy(threshold: dict[str, Any]) -> ThresholdPolicy:
    return ThresholdPolicy(**{**threshold, "warnings": tuple(threshold.get("warnings", ()))})


def _upgrade_v1(body: dict[str, Any]) -> dict[str, Any]:
    """A format-1 gallery.json (threshold and crop as loose fields) read as format 2."""
    crop = body.pop("crop", None)
    if not crop:
        raise ValueError("format 1 without the records' crop settings")
    size = body.pop("image_size")
    per_species = body.pop("per_species_thresholds", {})
    threshold = ThresholdPolicy(float(body.pop("threshold")), dict(per_species), "recorded (format 1)")
    return {
        **body,
        "format_version": FORMAT_VERSION,
        "threshold": asdict(threshold),
        "image": asdict(ImageSettings.from_manifest(size, crop)),
    }
