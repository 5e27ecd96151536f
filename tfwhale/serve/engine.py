"""The catalogue's identification engine (serve): the predict gallery in memory, grown as photos are added.

Every answer goes through the query path (tfwhale.query.path: crop, embed, rank, threshold policy), as
identify's and predict's do; the engine only keeps the catalogue's assigned photos in the searched matrix
so that the next query finds them, and finds each candidate's best-matching photos.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from tfwhale.contracts.gallery_manifest import ThresholdPolicy
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.query.answers import QueryAnswer
from tfwhale.query.path import Embedded, QueryPath
from tfwhale.retrieval import ranking

logger = logging.getLogger(__name__)

PHOTOS_PER_CANDIDATE = 3


@dataclass(frozen=True)
class Candidate:
    label: str  # an individual id, or new_individual
    similarity: float | None
    species: str | None
    photos: list[tuple[str | None, float]]  # (photo hash, similarity) of its best-matching photos


@dataclass
class Result:
    candidates: list[Candidate]
    threshold: float
    embedding: np.ndarray  # the query in the gallery's space, before whitening (what is stored)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    policy: ThresholdPolicy | None = None  # the policy the threshold came from (its source, AUC, warnings)
    fused: bool = False  # scores are the local re-rank's calibrated P(same individual), not similarities
    verified: dict[str, str] = field(default_factory=dict)  # label -> photo hash of its best verified photo

    @property
    def is_new(self) -> bool:
        return bool(self.candidates) and self.candidates[0].label == NEW_INDIVIDUAL

    def scores(self) -> list[dict]:
        """What a reviewer was shown, recorded with the decision."""
        return [{"label": c.label, "similarity": c.similarity} for c in self.candidates]


class Engine:
    """Thread-safe: searches read a consistent snapshot, additions take the lock."""

    def __init__(self, path: QueryPath) -> None:
        """From a loaded query path (see load); the latency benchmark builds one in memory."""
        self.path = path
        self.gallery = path.gallery
        self.manifest = path.gallery.manifest
        arrays = self.gallery.arrays
        self.species_of = dict(self.gallery.species_of)  # grows with the catalogue; the gallery's stays
        self._lock = threading.Lock()
        self._embed_lock = threading.Lock()
        base = arrays.gallery.astype(np.float32)
        self._matrix = np.ascontiguousarray(base)
        self._size = len(base)
        self._ids = list(arrays.train_ids)
        self._photos: list[str | None] = [None] * len(base)  # row -> photo hash, when known
        # kNN runs on integer codes: ranking sorts the labels per call, and 50,000 strings cost ~40 ms
        self._names = sorted(set(self._ids))
        self._code_of = {name: code for code, name in enumerate(self._names)}
        self._codes = np.empty(max(len(base), 16), np.int64)
        self._codes[: len(base)] = [self._code_of[label] for label in self._ids]
        self._sides: dict[str, str] = {}  # photo hash -> side, where known: same-side photos are shown first
        self._rows: dict[str, list[int]] = {}
        for row, label in enumerate(self._ids):
            self._rows.setdefault(label, []).append(row)

    @classmethod
    def load(cls, gallery_dir: str, run_dirs: list[str] | None = None, batch: int = 16) -> Engine:
        """What identify loads: gallery.json and the files it names, and the fold models, once."""
        return cls(QueryPath.load(gallery_dir, run_dirs, batch))

    # -- the gallery
    @property
    def size(self) -> int:
        return self._size

    def name_photos(self, sha_of_name: dict[str, str], names: list[str]) -> None:
        """Attach the catalogue's photo hashes to the gallery rows predict cached (by records image name)."""
        for row, name in enumerate(names[: len(self._photos)]):
            self._photos[row] = sha_of_name.get(name)

    def set_sides(self, sides: dict[str, str]) -> None:
        """Record which side photos show (photo hash -> side; 'unknown' forgets one)."""
        with self._lock:
            for photo, side in sides.items():
                if side and side != "unknown":
                    self._sides[photo] = side
                else:
                    self._sides.pop(photo, None)

    def add(self, photo: str, individual: str, embedding: np.ndarray, species: str = "") -> None:
        """Append one photo to the searched gallery (whitened as predict whitened the gallery)."""
        vector = np.asarray(embedding, np.float32)[None]
        if self.gallery.whitening is not None:
            vector = self.gallery.whitening.apply(vector)
        with self._lock:
            if self._size == len(self._matrix):  # grow by doubling: adding stays O(1) amortised
                bigger = np.empty((max(2 * len(self._matrix), 16), self._matrix.shape[1]), np.float32)
                bigger[: self._size] = self._matrix[: self._size]
                self._matrix = bigger
            if self._size == len(self._codes):
                self._codes = np.concatenate([self._codes, np.empty(len(self._codes), np.int64)])
            if individual not in self._code_of:
                self._code_of[individual] = len(self._names)
                self._names.append(individual)
            self._matrix[self._size] = vector[0]
            self._codes[self._size] = self._code_of[individual]
            self._ids.append(individual)
            self._photos.append(photo)
            self._rows.setdefault(individual, []).append(self._size)
            self.species_of.setdefault(individual, species)
            self._size += 1

    # -- queries
    def prepare(self, data: bytes, box: tuple | None, name: str) -> tuple[bytes, np.ndarray]:
        """(crop JPEG, uint8 image) of one photo, cropped as the records were; QueryError if unusable."""
        return self.path.crop(data, box, name)

    def embed(self, images: np.ndarray, names: list[str]) -> Embedded:
        with self._embed_lock:  # one photo at a time: the models' first call builds their predict step
            return self.path.embed(images, names)

    def _snapshot(self):
        with self._lock:  # rows appended later are not in this search
            size = self._size
            return self._matrix[:size], self._codes[:size], list(self._names)

    def _rank(self, embedded: Embedded, n: int = 5) -> tuple[ranking.Ranked, np.ndarray]:
        """The query path's ranking against the grown gallery: (ranked with label strings, matrix)."""
        matrix, codes, names = self._snapshot()
        searched = ranking.PreparedGallery(matrix, self.gallery.whitening)
        if self.path.blends(embedded):  # the blend matches kNN labels with the class names: strings
            return self.path.rank(embedded, searched, np.asarray(names)[codes], n), matrix
        ranked = self.path.rank(embedded, searched, codes, n)
        return ranking.Ranked([[names[c] for c in row] for row in ranked.labels], ranked.scores), matrix

    def search(self, embedded: Embedded, features: list | None = None, side: str = "") -> list[Result]:
        """Candidates by the embedding; with the photos' local features (a gallery made with them), by
        the fused P of the local re-rank (grown photos have no features: their similarity alone).
        `side`: the side the query photos show, when known: candidates show same-side photos first."""
        if features is None:
            ranked, matrix = self._rank(embedded)
            answers = self.path.answer(ranked, self.species_of)
        else:
            ranked, matrix = self._rank(embedded, n=len(self._snapshot()[2]))
            reranked = self.path.local.rerank(ranked, features)
            answers = self.path.answer(reranked.ranked, self.species_of, fused=True)
        searched = ranking.prepare_queries(
            embedded.combined, ranking.PreparedGallery(matrix, self.gallery.whitening), self.path.options
        )
        results = [
            self._result(answer, searched[i], matrix, embedded.combined[i], side)
            for i, answer in enumerate(answers)
        ]
        for result in results:
            result.fused = features is not None
            result.policy = self.path.policy if result.fused else self.path.embedding_policy
        if features is not None:
            for result, evidence in zip(results, reranked.evidence, strict=True):
                result.verified = self._verified_photos(result, evidence)
        return results

    def search_stored(self, embeddings: np.ndarray, side: str = "") -> list[Result]:
        """Candidates of photos from their stored combined embeddings (no per-fold ones, so no blend)."""
        return self.search(Embedded(np.asarray(embeddings, np.float32), None), side=side)

    def _result(self, answer: QueryAnswer, searched, matrix, query, side: str = "") -> Result:
        candidates = []
        for label, similarity, species in zip(
            answer.labels, answer.similarities, answer.species, strict=True
        ):
            best = []
            if label in self._rows:  # row lists and photo hashes only grow: no copy needed
                members = np.asarray(self._rows[label])
                members = members[members < len(matrix)]
                sims = matrix[members] @ searched  # only the candidate's photos, not the whole gallery
                best = self._best_photos(members, sims, side)
            candidates.append(Candidate(label, similarity, species or None, best))
        return Result(candidates, float(answer.threshold), np.asarray(query, np.float32))

    def _best_photos(self, members: np.ndarray, sims: np.ndarray, side: str) -> list:
        """A candidate's photos to show, best first: where the query's side is known, the photos of that
        side come first (a left flank is compared with left flanks), then the rest by similarity."""
        photos = [self._photos[row] for row in members]
        known = side if side != "unknown" else ""
        other_side = [0 if known and self._sides.get(photo) == known else 1 for photo in photos]
        order = np.lexsort((-sims, np.asarray(other_side)))[:PHOTOS_PER_CANDIDATE]
        return [(photos[j], float(sims[j])) for j in order]

    def identify_bytes(
        self, data: bytes, box: tuple | None, name: str, side: str = ""
    ) -> tuple[bytes, Result]:
        """One photo's crop and its candidates, with the time each step took (side: as in search)."""
        start = time.perf_counter()
        jpeg, image = self.prepare(data, box, name)
        decoded = time.perf_counter()
        features = self.path.local_features(data, box, name)  # None: the gallery does not re-rank
        featured = time.perf_counter()
        embedded = self.embed(image[None], [name])
        embedded_at = time.perf_counter()
        (result,) = self.search(embedded, None if features is None else [features], side)
        searched = time.perf_counter()
        result.timings = {
            "decode": decoded - start,
            "embed": embedded_at - featured,
            "search": searched - embedded_at,
        }
        if features is not None:
            result.timings["local_features"] = featured - decoded
        return jpeg, result

    @cached_property
    def _row_of_name(self) -> dict[str, int]:
        """Gallery row of each records image name (the rows the local features were made for)."""
        return {name: row for row, name in enumerate(self.gallery.arrays.train_names)}

    def _verified_photos(self, result: Result, evidence) -> dict[str, str]:
        """Each candidate's photo with the most verified matches in the re-rank (what identify --explain
        draws), by its catalogue hash; candidates with no verified pair or no known photo are left out."""
        row_of = self._row_of_name
        found = {}
        for candidate in result.candidates:
            best = self.path.local.best_photo(evidence, candidate.label)
            row = None if best is None else row_of.get(best[0])
            if row is not None and row < len(self._photos) and self._photos[row] is not None:
                found[candidate.label] = self._photos[row]
        return found

    def free_id(self, taken: set[str], prefix: str = "ind-") -> str:
        """The first id prefixNNNNN that neither the gallery nor the catalogue uses."""
        with self._lock:
            used = taken | set(self._rows)
        n = len(used) + 1
        for candidate in range(1, n + 2):
            if f"{prefix}{candidate:05d}" not in used:
                return f"{prefix}{candidate:05d}"
        raise AssertionError("unreachable: n + 1 ids cannot all be taken by n")

    def best(self, queries: np.ndarray) -> list[tuple[str, float, float]]:
        """(best individual, its similarity, its threshold) per query, without the photo comparison."""
        ranked, _ = self._rank(Embedded(np.asarray(queries, np.float32), None), n=1)
        out = []
        for labels, scores, answer in zip(
            ranked.labels, ranked.scores, self.path.answer(ranked, self.species_of), strict=True
        ):
            label = labels[0] if labels else NEW_INDIVIDUAL
            out.append((label, float(scores[0]) if scores else -1.0, answer.threshold))
        return out
