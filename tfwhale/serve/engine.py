"""The catalogue's identification engine (serve): the predict gallery in memory, grown as photos are added.

It loads what identify loads (gallery.json and the files it names, the fold models once), crops and
embeds a photo exactly as identify does, ranks with the gallery's options and threshold, and keeps the
catalogue's assigned photos in the searched matrix so that the next query finds them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from tfwhale import identify
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.retrieval import ranking
from tfwhale.retrieval.threshold import insert_new_individual

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

    @property
    def is_new(self) -> bool:
        return bool(self.candidates) and self.candidates[0].label == NEW_INDIVIDUAL

    def scores(self) -> list[dict]:
        """What a reviewer was shown, recorded with the decision."""
        return [{"label": c.label, "similarity": c.similarity} for c in self.candidates]


class Engine:
    """Thread-safe: searches read a consistent snapshot, additions take the lock."""

    def __init__(self, gallery: identify.Gallery, runs: list, models: list[list], batch: int = 16) -> None:
        """From parts already loaded (see load); the latency benchmark builds them in memory."""
        self.gallery = gallery
        self.manifest = gallery.manifest
        self.runs = runs
        self.models = models
        self.settings = identify.image_settings(gallery)
        self.options = identify.options_of(self.gallery)
        self.batch = batch
        self.species_of = dict(zip(self.gallery.ids, self.gallery.species, strict=True))
        self._lock = threading.Lock()
        self._embed_lock = threading.Lock()
        base = self.gallery.embeddings.astype(np.float32)
        self._matrix = np.ascontiguousarray(base)
        self._size = len(base)
        self._ids = list(self.gallery.ids)
        self._photos: list[str | None] = [None] * len(base)  # row -> photo hash, when known
        # kNN runs on integer codes: ranking sorts the labels per call, and 50,000 strings cost ~40 ms
        self._names = sorted(set(self._ids))
        self._code_of = {name: code for code, name in enumerate(self._names)}
        self._codes = np.empty(max(len(base), 16), np.int64)
        self._codes[: len(base)] = [self._code_of[label] for label in self._ids]
        self._rows: dict[str, list[int]] = {}
        for row, label in enumerate(self._ids):
            self._rows.setdefault(label, []).append(row)

    @classmethod
    def load(cls, gallery_dir: str, run_dirs: list[str] | None = None, batch: int = 16) -> Engine:
        """What identify loads: gallery.json and the files it names, and the fold models, once."""
        gallery = identify.load_gallery(gallery_dir)
        runs = identify.recorded_runs(gallery, run_dirs)
        return cls(gallery, runs, identify.load_models(runs), batch)

    # -- the gallery
    @property
    def size(self) -> int:
        return self._size

    def name_photos(self, sha_of_name: dict[str, str], names: list[str]) -> None:
        """Attach the catalogue's photo hashes to the gallery rows predict cached (by records image name)."""
        for row, name in enumerate(names[: len(self._photos)]):
            self._photos[row] = sha_of_name.get(name)

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
        """(crop JPEG, uint8 image) of one photo, cropped as the records were; IdentifyError if unusable."""
        return identify.prepare_photo_bytes(data, box, self.settings, name)

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, list]:
        """Combined embeddings [n, D] (the gallery's space, before whitening) and the per-fold ones."""
        with self._embed_lock:  # one photo at a time: the models' first call builds their predict step
            per_run = identify.embed_loaded(images, self.models, self.manifest.flip_tta, self.batch)
        return identify.combine(per_run, self.gallery), per_run

    def _snapshot(self):
        with self._lock:  # rows appended later are not in this search
            size = self._size
            return self._matrix[:size], self._codes[:size], list(self._names)

    def search(self, queries: np.ndarray, per_run: list | None = None) -> list[Result]:
        matrix, codes, names = self._snapshot()
        prepared = ranking.PreparedGallery(matrix, self.gallery.whitening)
        heads = None
        if self.options.blend and per_run:
            heads = identify.heads_for(per_run, self.runs, self.gallery)
        if heads is None:
            options = ranking.RankOptions(**{**self.manifest.options, "blend": 0.0})
            ranked = ranking.rank(queries, prepared, codes, options)
            labels_of = [[names[code] for code in row] for row in ranked.labels]
        else:  # the blend matches kNN labels with the classifier's class names: strings
            options = self.options
            ranked = ranking.rank(queries, prepared, np.asarray(names)[codes], options, heads)
            labels_of = ranked.labels
        searched = ranking.prepare_queries(queries, prepared, options)
        return [
            self._result(labels, scores, searched[i], matrix, queries[i])
            for i, (labels, scores) in enumerate(zip(labels_of, ranked.scores, strict=True))
        ]

    def _result(self, labels, scores, searched, matrix, query) -> Result:
        threshold = self.manifest.threshold_for(self.species_of.get(labels[0]) if labels else None)
        top = insert_new_individual([labels], [scores], threshold)[0]
        score_of = dict(zip(labels, scores, strict=True))
        candidates = []
        for label in top:
            best = []
            if label in self._rows:  # row lists and photo hashes only grow: no copy needed
                members = np.asarray(self._rows[label])
                members = members[members < len(matrix)]
                sims = matrix[members] @ searched  # only the candidate's photos, not the whole gallery
                order = np.argsort(-sims)[:PHOTOS_PER_CANDIDATE]
                best = [(self._photos[members[j]], float(sims[j])) for j in order]
            similarity = score_of.get(label)
            species = self.species_of.get(label) or None
            candidates.append(
                Candidate(label, None if similarity is None else float(similarity), species, best)
            )
        return Result(candidates, float(threshold), np.asarray(query, np.float32))

    def identify_bytes(self, data: bytes, box: tuple | None, name: str) -> tuple[bytes, Result]:
        """One photo's crop and its candidates, with the time each step took."""
        start = time.perf_counter()
        jpeg, image = self.prepare(data, box, name)
        decoded = time.perf_counter()
        queries, per_run = self.embed(image[None])
        embedded = time.perf_counter()
        identify.check_finite(queries, [name], "the fold models")
        (result,) = self.search(queries, per_run)
        searched = time.perf_counter()
        result.timings = {
            "decode": decoded - start,
            "embed": embedded - decoded,
            "search": searched - embedded,
        }
        return jpeg, result

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
        matrix, codes, names = self._snapshot()
        options = ranking.RankOptions(**{**self.manifest.options, "blend": 0.0})
        prepared = ranking.PreparedGallery(matrix, self.gallery.whitening)
        ranked = ranking.rank(queries, prepared, codes, options, n=1)
        out = []
        for labels, scores in zip(ranked.labels, ranked.scores, strict=True):
            label = names[labels[0]] if labels else NEW_INDIVIDUAL
            score = float(scores[0]) if scores else -1.0
            out.append((label, score, self.manifest.threshold_for(self.species_of.get(label))))
        return out
