"""Query path, local re-rank: a gallery's local features loaded once; a query's match-size crop -> its
SIFT -> fused P(same individual) per individual, ranked (galleries with rerank "local", issue 24).

Both sides crop the same way (matching.photo.match_crop, which the builder's workers use too): the
original photo and its box through the gallery's own crop settings (enlarge), at the match size instead
of the model's input size, so the markings keep their detail, its aspect ratio kept or stretched square
as the gallery's recorded SiftSettings.crop says. The gallery's features were made by the same function
(predict's: by the builder, from the records' photos).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from tfwhale.contracts.gallery_manifest import GalleryManifest, LocalRerank
from tfwhale.contracts.local_features import FeatureSet, LocalFeatures, LocalFeaturesError, load_feature_set
from tfwhale.core import files
from tfwhale.matching.aggregate import RerankSettings
from tfwhale.matching.features import SiftSettings
from tfwhale.matching.pairs import PairSettings
from tfwhale.matching.photo import photo_features
from tfwhale.matching.rerank import Calibrations, Evidence, LocalGallery, fused_order, query_evidence
from tfwhale.retrieval.ranking import Ranked


@dataclass(frozen=True)
class MatchSettings:
    """The three settings sections of a local re-rank, one source of defaults (the matching library's)."""

    sift: SiftSettings = field(default_factory=SiftSettings)
    pairs: PairSettings = field(default_factory=PairSettings)
    rerank: RerankSettings = field(default_factory=RerankSettings)

    @classmethod
    def of(cls, local: LocalRerank) -> MatchSettings:
        return cls(
            SiftSettings.from_stored(local.sift), PairSettings(**local.pairs), RerankSettings(**local.rerank)
        )

    def sections(self) -> dict[str, dict]:
        """The fields LocalRerank stores (sift, pairs, rerank)."""
        return {"sift": asdict(self.sift), "pairs": asdict(self.pairs), "rerank": asdict(self.rerank)}


@dataclass(frozen=True)
class Owners:
    """Each searched photo's individual as the re-rank counts them: the individuals (sorted) and each
    photo's code among them, row for row (the gallery's own photos, then any grown ones)."""

    individuals: np.ndarray
    codes: np.ndarray

    @classmethod
    def of(cls, ids: Sequence[str]) -> Owners:
        individuals = np.asarray(sorted(set(ids)))
        return cls(individuals, np.searchsorted(individuals, np.asarray(ids)))


@dataclass(frozen=True)
class Reranked:
    """Queries' individuals ranked by fused P (the Ranked answer_rows takes) and each query's evidence
    (its raw scores and the best verified photo of each individual, for --explain)."""

    ranked: Ranked
    evidence: list[Evidence]


class LocalRerankPath:
    """A gallery's local features, their LNBNN index and calibrations, read once."""

    def __init__(self, out_dir: str, manifest: GalleryManifest, train_names: Sequence[str],
                 train_ids: Sequence[str]) -> None:  # fmt: skip
        local = manifest.local
        assert local is not None, "only for galleries with rerank 'local'"
        path = files.join(out_dir, local.features_file)
        try:
            features = load_feature_set(path, local.features_sha256)
        except LocalFeaturesError as err:
            raise ValueError(str(err)) from None
        if list(features.names) != list(train_names):
            raise ValueError(f"{path}: not the gallery's photos in order; make the gallery again")
        self.settings = MatchSettings.of(local)
        self.image = manifest.image
        self.photos_root = local.photos_root
        self.base_ids = list(train_ids)  # the gallery's own photos' individuals (relabelled: the catalogue's)
        owners = Owners.of(train_ids)
        self.individuals = owners.individuals
        self.gallery = LocalGallery(features, owners.codes, len(owners.individuals))
        self.calibrations = Calibrations.from_dict(local.calibrations)

    def relabelled(
        self, train_ids: Sequence[str], names: Sequence[str] = (), features: Sequence[LocalFeatures] = (),
        ids: Sequence[str] = (), previous: LocalRerankPath | None = None,
    ) -> LocalRerankPath:  # fmt: skip
        """This path with the gallery's photos under other individuals (the catalogue's merges, splits
        and reassignments), row for row, then the grown photos given (as with_grown); the features and
        their index are shared, not copied."""
        other = copy.copy(self)
        other.base_ids = list(train_ids)
        return other.with_grown(names, features, ids, previous)

    def with_grown(self, names: Sequence[str], features: Sequence[LocalFeatures], ids: Sequence[str],
                   previous: LocalRerankPath | None = None) -> LocalRerankPath:  # fmt: skip
        """This path searching, after the gallery's own photos, the catalogue's grown ones (`names`:
        their photo hashes, `ids`: their individuals; these replace any grown before), as if they were
        the gallery's: the calibrations stay as fitted. The grown photos get their own small LNBNN
        indexes (the gallery's is shared): `previous` (the path searched so far) lends those it can, so
        that adding one photo rebuilds only the index of the recent ones (matching.grown)."""
        other = copy.copy(self)
        owners = Owners.of(self.base_ids + list(ids))
        other.individuals = owners.individuals
        grown = FeatureSet.from_photos(list(names), list(features))
        before = previous.gallery if previous is not None else None
        other.gallery = self.gallery.with_grown(grown, owners.codes, len(owners.individuals), before)
        return other

    @property
    def features_key(self) -> str:
        """What a photo's features depend on (the crop and SIFT settings): stored features made under
        another key are made again."""
        made_by = repr((self.image, self.settings.sift))
        return hashlib.sha256(made_by.encode()).hexdigest()[:16]

    def features(self, data: bytes, box: tuple | None) -> LocalFeatures:
        return photo_features(data, box, self.image, self.settings.sift)

    def rerank(self, ranked: Ranked, features: Sequence[LocalFeatures], leave_out: np.ndarray | None = None,
               other_side: np.ndarray | None = None) -> Reranked:  # fmt: skip
        """ranked: the embedding's ranking of every individual (scores = its similarity) per query;
        leave_out: rows of the gallery (own then grown photos) that are the query itself (and its twins);
        other_side: bool per row, True where a photo shows another side than the queries (verified last).
        An individual with no photo here (one the engine has but the path was not given) is scored by its
        similarity alone, its inliers and votes 0: P(inliers) and P(votes) of nothing seen."""
        labels, scores, evidence = [], [], []
        code_of = {label: code for code, label in enumerate(self.individuals.tolist())}
        for row_labels, row_scores, query in zip(ranked.labels, ranked.scores, features, strict=True):
            cosine = np.full(len(self.individuals), -1.0)
            grown, grown_cosine = [], []
            for label, score in zip(row_labels, row_scores, strict=True):
                if label in code_of:
                    cosine[code_of[label]] = score
                else:
                    grown.append(label)
                    grown_cosine.append(score)
            found = query_evidence(
                query, cosine, self.gallery, self.settings.rerank, self.settings.pairs, leave_out, other_side
            )
            nothing = np.zeros(len(grown))
            fused = np.concatenate([
                self.calibrations.fused(found.cosine, found.inliers, found.votes),
                self.calibrations.fused(np.asarray(grown_cosine, np.float64), nothing, nothing),
            ])  # fmt: skip
            every = self.individuals.tolist() + grown  # a list: a numpy array's width would cut names
            order, answered = fused_order(fused, np.concatenate([found.cosine, grown_cosine]))
            labels.append([every[i] for i in order])
            scores.append(answered[order].tolist())
            evidence.append(found)
        return Reranked(Ranked(labels, scores), evidence)

    def best_photo(self, evidence: Evidence, label: str) -> tuple[str, object] | None:
        """(photo name, PairMatch) of `label`'s best verified photo for a query, if any: a gallery photo's
        records image name, a grown photo's hash (see is_grown)."""
        code = int(np.searchsorted(self.individuals, label))
        if code >= len(self.individuals) or self.individuals[code] != label or code not in evidence.best:
            return None
        photo, match = evidence.best[code]
        return self.gallery.name(photo), match
