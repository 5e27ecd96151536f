"""The gallery hand-off (predict -> identify, serve): gallery.json names everything a gallery is made of.

predict writes it last, after every file it names; identify and the catalogue app read only it (and
the files it names, checked by sha256), never report.json, which is for people.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tfwhale.core import files

GALLERY_NAME = "gallery.json"
FORMAT_VERSION = 1


class GalleryError(ValueError):
    """A predict output folder that holds no usable gallery."""


@dataclass(frozen=True)
class GalleryRun:
    """One run folder of the gallery: its fold models (name -> sha256 of their run.json) and weight."""

    run_dir: str
    weight: float
    embedding_dim: int
    folds: dict[str, str]


@dataclass(frozen=True)
class GalleryManifest:
    runs: tuple[GalleryRun, ...]
    flip_tta: bool
    options: dict[str, Any]  # retrieval.ranking.RankOptions fields
    threshold: float
    per_species_thresholds: dict[str, float]
    image_size: int
    crop: dict[str, Any] | None  # the records' crop settings: identify crops new photos the same way
    records_root: str
    records_manifest_sha256: str
    embeddings_file: str  # in the same folder
    embeddings_sha256: str
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def threshold_for(self, species: str | None) -> float:
        return self.per_species_thresholds.get(species, self.threshold) if species else self.threshold


def write_gallery_manifest(out_dir: str, manifest: GalleryManifest) -> str:
    """Atomically write gallery.json; call it after every file it names is written."""
    path = files.join(out_dir, GALLERY_NAME)
    body = asdict(manifest)
    body["runs"] = [asdict(run) for run in manifest.runs]
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
        if body.get("format_version", 0) > FORMAT_VERSION:
            raise GalleryError(f"{path}: written by a newer tfwhale (format {body['format_version']})")
        body["runs"] = tuple(GalleryRun(**run) for run in body["runs"])
        manifest = GalleryManifest(**body)
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
    return manifest
