"""Day-one gallery, local features: every gallery photo's SIFT from its original photo, the three
calibrations and the threshold on the fused P(same individual), all by leave-one-out within the catalogue.

The photos are cropped for matching by the query path's own match_crop (the same settings as the
records, at the match size), so a gallery photo's features are what identify would compute for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from tfwhale.contracts.gallery_manifest import LocalRerank
from tfwhale.contracts.local_features import NO_FEATURES, FeatureSet, save_feature_set
from tfwhale.core import files
from tfwhale.gallery.tune import CatalogueTuning, tune_ranked
from tfwhale.imaging.photo_crop import ImageError, ImageSettings
from tfwhale.matching.photo import photo_features
from tfwhale.matching.rerank import LocalGallery, fit_calibrations, leave_one_out
from tfwhale.query.fused import fused_ranking
from tfwhale.query.local import MatchSettings, Owners

logger = logging.getLogger(__name__)

FEATURES_NAME = "local_features.npz"  # in the gallery folder
# Used when the catalogue is too small to tune: on the nyala photos (5 splits, BENCHMARKS.md "The
# day-one gallery with local features") leave-one-out tuning gave 0.08-0.13 and the queries were
# answered best at 0.10-0.22 on the fused P.
FALLBACK_FUSED_THRESHOLD = 0.15


@dataclass(frozen=True)
class LocalOutcome:
    local: LocalRerank
    tuning: CatalogueTuning


def extract_all(
    images_root: str, names: Sequence[str], image: ImageSettings, settings: MatchSettings, progress: bool
) -> FeatureSet:
    """Each photo's features, in order; one that cannot be read gets none (logged), not the others."""
    found = []
    for name in tqdm(names, desc="local features", unit="photo", disable=not progress):
        path = files.join(images_root, name)
        try:
            found.append(photo_features(files.read_bytes(path), None, image, settings.sift))
        except (ImageError, OSError) as err:
            logger.warning("%s: no local features (%s)", path, err)
            found.append(NO_FEATURES)
    return FeatureSet.from_photos(list(names), found)


def make_local(
    out: str,
    images_root: str,
    embeddings: np.ndarray,
    names: Sequence[str],
    ids: Sequence[str],
    image: ImageSettings,
    new_share: float,
    seed: int,
    progress: bool = True,
) -> LocalOutcome:
    """Features, calibrations and the fused threshold of a gallery; ValueError when the catalogue gives
    no pair to calibrate on (the caller keeps the embedding-only gallery)."""
    settings = MatchSettings()
    features = extract_all(images_root, names, image, settings, progress)
    owners = Owners.of(ids)
    individuals = owners.individuals
    gallery = LocalGallery(features, owners.codes, len(individuals))
    with tqdm(total=len(names), desc="matching leave-one-out", unit="photo", disable=not progress) as bar:
        loo = leave_one_out(embeddings, gallery, settings.rerank, settings.pairs, lambda: bar.update(1))
    calibrations = fit_calibrations(loo)
    ranked = fused_ranking(loo, calibrations, individuals)
    tuning = tune_ranked(ranked, ids, new_share, seed, FALLBACK_FUSED_THRESHOLD, "fused P(same)")
    sha256 = save_feature_set(files.join(out, FEATURES_NAME), features)
    local = LocalRerank(
        features_file=FEATURES_NAME,
        features_sha256=sha256,
        calibrations=calibrations.to_dict(),
        photos_root=images_root,
        **settings.sections(),
    )
    return LocalOutcome(local, tuning)
