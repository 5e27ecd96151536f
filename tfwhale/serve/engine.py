"""The catalogue's identification engine (serve): the predict gallery in memory, grown as photos are added.

Every answer goes through the query path (tfwhale.query.path: crop, embed, rank, threshold policy), as
identify's and predict's do; the engine only keeps the catalogue's assigned photos in the searched matrix
so that the next query finds them, and finds each candidate's best-matching photos.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from tfwhale.contracts.gallery_manifest import ThresholdPolicy
from tfwhale.contracts.local_features import NO_FEATURES, LocalFeatures
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.query.answers import QueryAnswer
from tfwhale.query.local import LocalRerankPath
from tfwhale.query.path import Embedded, QueryPath
from tfwhale.retrieval import ranking

logger = logging.getLogger(__name__)

PHOTOS_PER_CANDIDATE = 3


@dataclass
class _Snapshot:
    """One search's view of the gallery: rows appended or relabelled meanwhile are not in it."""

    matrix: np.ndarray
    codes: np.ndarray
    names: list[str]
    rows: dict[str, list[int]]
    photos: list[str | None]
    merges: dict[str, str]
    local: LocalRerankPath | None = None  # the re-rank with predict's rows under their current ids
    kept: np.ndarray | None = None  # rows searched, when some are left out


def _merged(ranked: ranking.Ranked, merges: dict[str, str], n: int) -> ranking.Ranked:
    """A ranking with merged-away ids answered by the id they were merged into, each id once (its best),
    n at most."""
    if not merges:
        return ranked
    labels, scores = [], []
    for row_labels, row_scores in zip(ranked.labels, ranked.scores, strict=True):
        seen, kept_labels, kept_scores = set(), [], []
        for label, score in zip(row_labels, row_scores, strict=True):
            label = merges.get(label, label)
            if label not in seen:
                seen.add(label)
                kept_labels.append(label)
                kept_scores.append(score)
        labels.append(kept_labels[:n])
        scores.append(kept_scores[:n])
    return ranking.Ranked(labels, scores)


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
    answered_at: str = ""  # set when this is an answer stored at upload time, not a search just made
    features: LocalFeatures | None = None  # the photo's own local features (kept with an upload)

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
        self._base = np.ascontiguousarray(arrays.gallery.astype(np.float32))  # predict's rows, never moved
        self.base_ids = list(arrays.train_ids)  # the records' ids of those rows
        self.base_photos: list[str | None] = [None] * len(self._base)  # row -> photo hash, when known
        self._sides: dict[str, str] = {}  # photo hash -> side, where known: same-side photos are shown first
        self._local = path.local  # relabel() gives it the catalogue's current ids of predict's rows
        self._local_base = path.local  # the same without grown photos: add() grows it anew
        self._grown_local: tuple[list[str], list[LocalFeatures], list[str]] = ([], [], [])
        self._install(self._base, list(self.base_ids), list(self.base_photos), {})

    def _install(
        self, matrix: np.ndarray, ids: list[str], photos: list[str | None], merges: dict[str, str]
    ) -> None:
        """Swap in a searched gallery (rows, their labels and photos); searches under way keep theirs."""
        # kNN runs on integer codes: ranking sorts the labels per call, and 50,000 strings cost ~40 ms
        names = sorted(set(ids))
        code_of = {name: code for code, name in enumerate(names)}
        codes = np.empty(max(len(ids), 16), np.int64)
        codes[: len(ids)] = [code_of[label] for label in ids]
        rows: dict[str, list[int]] = {}
        for row, label in enumerate(ids):
            rows.setdefault(label, []).append(row)
        row_of: dict[str, list[int]] = {}
        for row, photo in enumerate(photos):
            if photo is not None:
                row_of.setdefault(photo, []).append(row)
        with self._lock:
            self._row_of, self._merges = row_of, dict(merges)
            self._matrix, self._size, self._ids, self._photos = matrix, len(ids), ids, photos
            self._names, self._code_of, self._codes, self._rows = names, code_of, codes, rows

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
        with self._lock:
            for row, name in enumerate(names[: len(self.base_photos)]):
                self.base_photos[row] = self._photos[row] = sha_of_name.get(name)
                if self._photos[row] is not None:
                    self._row_of.setdefault(self._photos[row], []).append(row)

    def relabel(
        self, base_labels: list[str], grown: tuple[list[str], list[str], np.ndarray | None],
        merges: dict[str, str], grown_features: list[LocalFeatures] | None = None,
    ) -> None:  # fmt: skip
        """Search predict's rows under `base_labels` (the catalogue's current ids, after corrections and
        merges) and, after them, the catalogue's assigned photos `grown` (hashes, ids, embeddings), in
        the fused re-rank too with their `grown_features` (row for row; None: none known, no votes).
        `merges` (merged-away id -> kept id) also renames what the class heads and re-rank answer."""
        hashes, ids, embeddings = grown
        if self.path.local is not None:  # merged, split and reassigned gallery photos vote for their new id
            if grown_features is None:
                grown_features = [NO_FEATURES] * len(hashes)
            base = self.path.local.relabelled(base_labels)
            local = base.with_grown(hashes, grown_features, ids, self._local)  # rows as the matrix's
            with self._lock:
                self._local, self._local_base = local, base
                self._grown_local = (list(hashes), list(grown_features), list(ids))
        matrix = self._base  # add() grows a full matrix into a new one: predict's rows are never written
        if embeddings is not None and len(hashes):
            vectors = np.asarray(embeddings, np.float32)
            if self.gallery.whitening is not None:
                vectors = self.gallery.whitening.apply(vectors)
            matrix = np.concatenate([self._base, vectors.astype(np.float32)])
        self._install(matrix, list(base_labels) + list(ids), list(self.base_photos) + list(hashes), merges)

    def set_sides(self, sides: dict[str, str]) -> None:
        """Record which side photos show (photo hash -> side; 'unknown' forgets one)."""
        with self._lock:
            for photo, side in sides.items():
                if side and side != "unknown":
                    self._sides[photo] = side
                else:
                    self._sides.pop(photo, None)

    def add(
        self, photo: str, individual: str, embedding: np.ndarray, species: str = "",
        features: LocalFeatures | None = None,
    ) -> None:  # fmt: skip
        """Append one photo to the searched gallery (whitened as predict whitened the gallery), and with
        its local `features` to the fused re-rank's grown photos (their small index is rebuilt).
        One caller at a time (the catalogue's decisions are serialised); searches go on meanwhile."""
        vector = np.asarray(embedding, np.float32)[None]
        if self.gallery.whitening is not None:
            vector = self.gallery.whitening.apply(vector)
        local = None
        if self._local_base is not None:
            hashes, found, ids = (list(part) for part in self._grown_local)
            hashes.append(photo)
            found.append(NO_FEATURES if features is None else features)
            ids.append(individual)
            local = self._local_base.with_grown(hashes, found, ids, self._local)
        with self._lock:
            if local is not None:
                self._local, self._grown_local = local, (hashes, found, ids)
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
            self._row_of.setdefault(photo, []).append(self._size)
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

    def _snapshot(self, exclude: set[str] = frozenset()) -> _Snapshot:
        with self._lock:  # rows appended later are not in this search
            size = self._size
            snap = _Snapshot(self._matrix[:size], self._codes[:size], list(self._names), self._rows,
                             self._photos, self._merges, self._local)  # fmt: skip
            rows = [row for photo in exclude for row in self._row_of.get(photo, ()) if row < size]
        if rows:  # the photo itself and its twins: a photo is never its own candidate
            snap.kept = np.ones(size, bool)
            snap.kept[rows] = False
        return snap

    def _rank(self, embedded: Embedded, snap: _Snapshot, n: int = 5) -> ranking.Ranked:
        """The query path's ranking against the grown gallery, with label strings."""
        matrix, codes = snap.matrix, snap.codes
        if snap.kept is not None:
            matrix, codes = matrix[snap.kept], codes[snap.kept]
        searched = ranking.PreparedGallery(matrix, self.gallery.whitening)
        wanted = n + len(snap.merges)  # merged ids collapse into one: rank more, keep n
        if self.path.blends(embedded):  # the blend matches kNN labels with the class names: strings
            ranked = self.path.rank(embedded, searched, np.asarray(snap.names)[codes], wanted)
        else:
            ranked = self.path.rank(embedded, searched, codes, wanted)
            ranked = ranking.Ranked([[snap.names[c] for c in row] for row in ranked.labels], ranked.scores)
        return _merged(ranked, snap.merges, n)

    def search(
        self, embedded: Embedded, features: list | None = None, side: str = "", *,
        exclude: set[str] = frozenset(),
    ) -> list[Result]:  # fmt: skip
        """Candidates by the embedding; with the photos' local features (a gallery made with them), by
        the fused P of the local re-rank (over the gallery's photos and the catalogue's grown ones).
        `side`: the side the query photos show, when known: candidates show same-side photos first.
        Rows of the photos in `exclude` (the query itself and its twins) are not searched."""
        snap = self._snapshot(exclude)
        if features is None:
            ranked = self._rank(embedded, snap)
            answers = self.path.answer(ranked, self.species_of)
        else:
            ranked = self._rank(embedded, snap, n=len(snap.names))
            left_out = None if snap.kept is None else np.flatnonzero(~snap.kept)
            reranked = snap.local.rerank(ranked, features, left_out, self._other_side(snap, side))
            answers = self.path.answer(
                _merged(reranked.ranked, snap.merges, len(snap.names)), self.species_of, fused=True
            )
        searched = ranking.prepare_queries(
            embedded.combined, ranking.PreparedGallery(snap.matrix, self.gallery.whitening), self.path.options
        )
        results = [
            self._result(answer, searched[i], snap, embedded.combined[i], side)
            for i, answer in enumerate(answers)
        ]
        for result in results:
            result.fused = features is not None
            result.policy = self.path.policy if result.fused else self.path.embedding_policy
        if features is not None:
            for result, evidence in zip(results, reranked.evidence, strict=True):
                result.verified = self._verified_photos(result, evidence, snap.local)
        return results

    def _other_side(self, snap: _Snapshot, side: str) -> np.ndarray | None:
        """bool per searched row: its photo is known to show another side than `side` (None: the query's
        side is unknown, or no photo's is)."""
        if side in ("", "unknown") or not self._sides or len(snap.local.gallery) != len(snap.matrix):
            return None  # the re-rank's rows are the searched rows, or no side order is given
        return np.array([self._sides.get(photo, side) != side for photo in snap.photos[: len(snap.matrix)]])

    def search_stored(
        self, embeddings: np.ndarray, side: str = "", *, exclude: set[str] = frozenset(),
        features: list | None = None,
    ) -> list[Result]:  # fmt: skip
        """Candidates of photos from their stored combined embeddings (no per-fold ones, so no blend);
        with their local features, re-ranked by them as an upload is."""
        embedded = Embedded(np.asarray(embeddings, np.float32), None)
        return self.search(embedded, features, side=side, exclude=exclude)

    def _result(self, answer: QueryAnswer, searched, snap: _Snapshot, query, side: str = "") -> Result:
        candidates = []
        for label, similarity, species in zip(
            answer.labels, answer.similarities, answer.species, strict=True
        ):
            best = []
            if label in snap.rows:  # row lists and photo hashes only grow: no copy needed
                members = np.asarray(snap.rows[label])
                members = members[members < len(snap.matrix)]
                if snap.kept is not None:
                    members = members[snap.kept[members]]
                sims = snap.matrix[members] @ searched  # only the candidate's photos, not the whole gallery
                best = self._best_photos(members, sims, side, snap.photos)
            candidates.append(Candidate(label, similarity, species or None, best))
        return Result(candidates, float(answer.threshold), np.asarray(query, np.float32))

    def _best_photos(self, members: np.ndarray, sims: np.ndarray, side: str, rows_photos=None) -> list:
        """A candidate's photos to show, best first: where the query's side is known, the photos of that
        side come first (a left flank is compared with left flanks), then the rest by similarity.
        `rows_photos`: the searched snapshot's row -> photo list (default: the gallery's now)."""
        rows_photos = self._photos if rows_photos is None else rows_photos
        photos = [rows_photos[row] for row in members]
        known = side if side != "unknown" else ""
        other_side = [0 if known and self._sides.get(photo) == known else 1 for photo in photos]
        order = np.lexsort((-sims, np.asarray(other_side)))[:PHOTOS_PER_CANDIDATE]
        return [(photos[j], float(sims[j])) for j in order]

    def identify_bytes(
        self, data: bytes, box: tuple | None, name: str, side: str = "", *,
        exclude_of: Callable[[bytes], set] | None = None,
    ) -> tuple[bytes, Result]:  # fmt: skip
        """One photo's crop and its candidates, with the time each step took (side: as in search);
        `exclude_of(crop JPEG)` names the catalogue's photos that are this one (left out of its search)."""
        start = time.perf_counter()
        jpeg, image = self.prepare(data, box, name)
        exclude = exclude_of(jpeg) if exclude_of is not None else set()
        decoded = time.perf_counter()
        features = self.path.local_features(data, box, name)  # None: the gallery does not re-rank
        featured = time.perf_counter()
        embedded = self.embed(image[None], [name])
        embedded_at = time.perf_counter()
        (result,) = self.search(embedded, None if features is None else [features], side, exclude=exclude)
        searched = time.perf_counter()
        result.timings = {
            "decode": decoded - start,
            "embed": embedded_at - featured,
            "search": searched - embedded_at,
        }
        if features is not None:
            result.timings["local_features"] = featured - decoded
        result.features = features
        return jpeg, result

    @cached_property
    def _row_of_name(self) -> dict[str, int]:
        """Gallery row of each records image name (the rows the local features were made for)."""
        return {name: row for row, name in enumerate(self.gallery.arrays.train_names)}

    def _verified_photos(self, result: Result, evidence, local: LocalRerankPath) -> dict[str, str]:
        """Each candidate's photo with the most verified matches in the re-rank (what identify --explain
        draws), by its catalogue hash; candidates with no verified pair or no known photo are left out.
        A gallery photo is named by its records image name, a grown one by its hash."""
        row_of = self._row_of_name
        found = {}
        for candidate in result.candidates:
            best = local.best_photo(evidence, candidate.label)
            if best is None:
                continue
            row = row_of.get(best[0])
            if row is not None and row < len(self._photos) and self._photos[row] is not None:
                found[candidate.label] = self._photos[row]
            elif row is None and best[0] in self._row_of:  # a grown photo: its hash
                found[candidate.label] = best[0]
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
        ranked = self._rank(Embedded(np.asarray(queries, np.float32), None), self._snapshot(), n=1)
        out = []
        for labels, scores, answer in zip(
            ranked.labels, ranked.scores, self.path.answer(ranked, self.species_of), strict=True
        ):
            label = labels[0] if labels else NEW_INDIVIDUAL
            out.append((label, float(scores[0]) if scores else -1.0, answer.threshold))
        return out
