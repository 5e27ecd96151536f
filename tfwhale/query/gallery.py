"""Query path: a gallery loaded through its contract (gallery.json, embeddings.npz) with its fold models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from tfwhale.contracts.gallery_arrays import GalleryArrays, load_gallery_arrays
from tfwhale.contracts.gallery_manifest import GalleryError, GalleryManifest, load_gallery_manifest
from tfwhale.contracts.run_folder import FoldModel, RunError, recorded_fold
from tfwhale.core import files
from tfwhale.retrieval.postprocess import Whitening
from tfwhale.retrieval.ranking import RankOptions


class QueryError(ValueError):
    """A photo, box or gallery the query path cannot use; the message names it."""


@dataclass(frozen=True)
class Gallery:
    """What every answer of one gallery is made from, read once."""

    out_dir: str
    manifest: GalleryManifest
    arrays: GalleryArrays
    runs: tuple[tuple[FoldModel, ...], ...]  # per gallery run, its fold models (found again on disk)

    @property
    def options(self) -> RankOptions:
        return RankOptions(**self.manifest.options)

    @property
    def whitening(self) -> Whitening | None:
        return None if self.arrays.whitening is None else Whitening(*self.arrays.whitening)

    @cached_property  # every answer looks species up: built once per gallery, not once per query
    def species_of(self) -> dict[str, str]:
        return dict(zip(self.arrays.train_ids, self.arrays.train_species, strict=True))

    @property
    def weights(self) -> list[float]:
        return [run.weight for run in self.manifest.runs]


def load_gallery(out_dir: str, run_dirs: Sequence[str] | None = None) -> Gallery:
    """gallery.json, the arrays it names and its fold models; QueryError naming what is unusable."""
    try:
        manifest = load_gallery_manifest(out_dir)
    except GalleryError as err:
        raise QueryError(str(err)) from None
    arrays = load_gallery_arrays(files.join(out_dir, manifest.embeddings_file))
    if manifest.options.get("blend") and not arrays.centres:
        raise QueryError(
            f"{out_dir}: the gallery blends class cosines but holds no class centres (made by an older "
            "tfwhale); run predict again"
        )
    return Gallery(out_dir, manifest, arrays, recorded_runs(out_dir, manifest, run_dirs))


def recorded_runs(
    out_dir: str, manifest: GalleryManifest, run_dirs: Sequence[str] | None
) -> tuple[tuple[FoldModel, ...], ...]:
    """The fold models the gallery was made with; given run folders must hold those very folds."""
    recorded = manifest.runs
    run_dirs = list(run_dirs) if run_dirs else [r.run_dir for r in recorded]
    if len(run_dirs) != len(recorded):
        made_with = [r.run_dir for r in recorded]
        raise QueryError(f"{out_dir} was made with {len(recorded)} run(s) {made_with}, not {run_dirs}")
    runs = []
    for run_dir, entry in zip(run_dirs, recorded, strict=True):
        try:
            folds = [recorded_fold(run_dir, n, sha, entry.embedding_dim) for n, sha in entry.folds.items()]
        except RunError as err:
            raise QueryError(
                f"{err} ({out_dir} was made with {entry.run_dir}); pass the same --runs, or run predict again"
            ) from None
        runs.append(tuple(folds))
    return tuple(runs)
