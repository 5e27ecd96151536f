"""The catalogue's identification engine (serve): the predict gallery in memory, grown as photos are added.

Every answer goes through the query path (tfwhale.query.path: crop, embed, rank, threshold policy), as
identify's and predict's do; the engine only keeps the catalogue's assigned photos in the searched matrix
so that the next query finds them. Candidates' photos to show: serve.candidates; the fused re-rank over
the catalogue's grown photos: serve.grown_local.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

import numpy as np

from tfwhale.contracts.local_features import NO_FEATURES, LocalFeatures
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.query.path import Embedded, QueryPath
from tfwhale.retrieval import ranking
from tfwhale.serve.candidates import Result, result_of, verified_photos
from tfwhale.serve.grown_local import GrownLocal
from tfwhale.serve.snapshot import Snapshot, merged

logger = logging.getLogger(__name__)


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
        self._sift_threads = ThreadPoolExecutor(2, thread_name_prefix="query-sift")  # identify_bytes
        self._base = np.ascontiguousarray(arrays.gallery.astype(np.float32))  # predict's rows, never moved
        self.base_ids = list(arrays.train_ids)  # the records' ids of those rows
        self.base_photos: list[str | None] = [None] * len(self._base)  # row -> photo hash, when known
        self._sides: dict[str, str] = {}  # photo hash -> side, where known: same-side photos are shown first
        self._side_codes: dict[str, int] = {}  # side -> its code in the per-row side array (0: unknown)
        # the fused re-rank (relabel() gives it the catalogue's current ids of predict's rows, add() grows it)
        self._grown = GrownLocal(path.local) if path.local is not None else None
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
            self._row_sides = np.zeros(len(codes), np.int16)
            self._set_row_sides(self._sides)

    def _set_row_sides(self, sides: dict[str, str]) -> None:
        """Each row's side code in the per-row side array (for these photos; under the lock), derived
        once here so that a query's side order costs one comparison of arrays, not a loop over rows."""
        for photo, side in sides.items():
            if side and side != "unknown":
                code = self._side_codes.setdefault(side, len(self._side_codes) + 1)
            else:
                code = 0
            for row in self._row_of.get(photo, ()):
                self._row_sides[row] = code

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
            self._row_sides = self._row_sides.copy()  # searches under way keep theirs
            self._set_row_sides(self._sides)

    def relabel(
        self, base_labels: list[str], grown: tuple[list[str], list[str], np.ndarray | None],
        merges: dict[str, str], grown_features: list[LocalFeatures] | None = None,
    ) -> None:  # fmt: skip
        """Search predict's rows under `base_labels` (the catalogue's current ids, after corrections and
        merges) and, after them, the catalogue's assigned photos `grown` (hashes, ids, embeddings), in
        the fused re-rank too with their `grown_features` (row for row; None: none known, no votes).
        `merges` (merged-away id -> kept id) also renames what the class heads and re-rank answer."""
        hashes, ids, embeddings = grown
        if self._grown is not None:  # merged, split and reassigned gallery photos vote for their new id
            if grown_features is None:
                grown_features = [NO_FEATURES] * len(hashes)
            local = self._grown.relabelled(self.path.local, base_labels, hashes, grown_features, ids)
            with self._lock:
                self._grown = local  # rows as the matrix's
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
            self._row_sides = self._row_sides.copy()  # searches under way keep theirs
            self._set_row_sides(sides)

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
        local = self._grown.added(photo, features, individual) if self._grown is not None else None
        with self._lock:
            if local is not None:
                self._grown = local
            if self._size == len(self._matrix):  # grow by doubling: adding stays O(1) amortised
                bigger = np.empty((max(2 * len(self._matrix), 16), self._matrix.shape[1]), np.float32)
                bigger[: self._size] = self._matrix[: self._size]
                self._matrix = bigger
            if self._size == len(self._codes):
                self._codes = np.concatenate([self._codes, np.empty(len(self._codes), np.int64)])
                self._row_sides = np.concatenate([self._row_sides, np.zeros(len(self._row_sides), np.int16)])
            if individual not in self._code_of:
                self._code_of[individual] = len(self._names)
                self._names.append(individual)
            self._matrix[self._size] = vector[0]
            self._codes[self._size] = self._code_of[individual]
            self._ids.append(individual)
            self._photos.append(photo)
            self._row_of.setdefault(photo, []).append(self._size)
            self._row_sides[self._size] = 0
            if photo in self._sides:
                self._set_row_sides({photo: self._sides[photo]})
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

    def _snapshot(self, exclude: set[str] = frozenset()) -> Snapshot:
        with self._lock:  # rows appended later are not in this search
            size = self._size
            local = self._grown.path if self._grown is not None else None
            snap = Snapshot(self._matrix[:size], self._codes[:size], list(self._names), self._rows,
                            self._photos, self._merges, local, sides=self._row_sides[:size])  # fmt: skip
            rows = [row for photo in exclude for row in self._row_of.get(photo, ()) if row < size]
        if rows:  # the photo itself and its twins: a photo is never its own candidate
            snap.kept = np.ones(size, bool)
            snap.kept[rows] = False
        return snap

    def _rank(self, embedded: Embedded, snap: Snapshot, n: int = 5) -> ranking.Ranked:
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
        return merged(ranked, snap.merges, n)

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
                merged(reranked.ranked, snap.merges, len(snap.names)), self.species_of, fused=True
            )
        searched = ranking.prepare_queries(
            embedded.combined, ranking.PreparedGallery(snap.matrix, self.gallery.whitening), self.path.options
        )
        same_side = self._same_side(snap, side)
        results = [
            result_of(answer, searched[i], snap, embedded.combined[i], same_side)
            for i, answer in enumerate(answers)
        ]
        for result in results:
            result.fused = features is not None
            result.policy = self.path.policy if result.fused else self.path.embedding_policy
        if features is not None:
            for result, evidence in zip(results, reranked.evidence, strict=True):
                result.verified = verified_photos(
                    result, evidence, snap.local, self._row_of_name, self._photos, self._row_of
                )
        return results

    def _same_side(self, snap: Snapshot, side: str) -> np.ndarray | None:
        """bool per searched row: its photo is known to show `side` (None: the query's side is unknown)."""
        if side in ("", "unknown"):
            return None
        code = self._side_codes.get(side)  # None: no photo shows this side
        return np.zeros(len(snap.sides), bool) if code is None else snap.sides == code

    def _other_side(self, snap: Snapshot, side: str) -> np.ndarray | None:
        """bool per searched row: its photo is known to show another side than `side` (None: the query's
        side is unknown, or no photo's is)."""
        same = self._same_side(snap, side)
        if same is None or not snap.sides.any() or len(snap.local.gallery) != len(snap.matrix):
            return None  # the re-rank's rows are the searched rows, or no side order is given
        return (snap.sides != 0) & ~same

    def search_stored(
        self, embeddings: np.ndarray, side: str = "", *, exclude: set[str] = frozenset(),
        features: list | None = None,
    ) -> list[Result]:  # fmt: skip
        """Candidates of photos from their stored combined embeddings (no per-fold ones, so no blend);
        with their local features, re-ranked by them as an upload is."""
        embedded = Embedded(np.asarray(embeddings, np.float32), None)
        return self.search(embedded, features, side=side, exclude=exclude)

    def identify_bytes(
        self, data: bytes, box: tuple | None, name: str, side: str = "", *,
        exclude_of: Callable[[bytes], set] | None = None,
    ) -> tuple[bytes, Result]:  # fmt: skip
        """One photo's crop and its candidates, with the time each step took (side: as in search);
        `exclude_of(crop JPEG)` names the catalogue's photos that are this one (left out of its search).

        Result.timings, seconds: decode (crop for the model, and exclude_of), embed, local_features (the
        query's SIFT, in its own thread beside exclude_of and embed), local_features_wait (what the answer
        still waited for it after the embedding) and search (search, fused re-rank, candidates' photos).
        The answer's wall time is decode + embed + local_features_wait + search."""
        start = time.perf_counter()
        jpeg, image = self.prepare(data, box, name)
        # the query's SIFT (from the original: its own decode and crop) runs beside the embedding, once
        # the photo proved usable: OpenCV and TensorFlow release the GIL, so the two overlap on two cores
        sift = self._sift_threads.submit(self._timed_local_features, data, box, name)
        try:
            exclude = exclude_of(jpeg) if exclude_of is not None else set()
            decoded = time.perf_counter()
            embedded = self.embed(image[None], [name])
        except BaseException:
            sift.cancel()  # a SIFT still queued would only hold a worker the next uploads wait for
            raise
        embedded_at = time.perf_counter()
        features, sift_seconds = sift.result()  # None: the gallery does not re-rank
        featured = time.perf_counter()
        (result,) = self.search(embedded, None if features is None else [features], side, exclude=exclude)
        searched = time.perf_counter()
        result.timings = {
            "decode": decoded - start,
            "embed": embedded_at - decoded,
            "search": searched - featured,
        }
        if features is not None:
            result.timings["local_features"] = sift_seconds
            result.timings["local_features_wait"] = featured - embedded_at
        result.features = features
        return jpeg, result

    def _timed_local_features(self, data: bytes, box: tuple | None, name: str) -> tuple:
        start = time.perf_counter()
        return self.path.local_features(data, box, name), time.perf_counter() - start

    @cached_property
    def _row_of_name(self) -> dict[str, int]:
        """Gallery row of each records image name (the rows the local features were made for)."""
        return {name: row for row, name in enumerate(self.gallery.arrays.train_names)}

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
