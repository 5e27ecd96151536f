"""The catalogue (serve): engine + database + image files, and the operations the pages call.

Each operation writes image files first (content-hash names, atomic), then its rows in one transaction,
then updates the in-memory gallery: a crash in between leaves at most an unreferenced file.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfwhale.contracts.individual_id import check_id
from tfwhale.contracts.local_features import NO_FEATURES, LocalFeatures
from tfwhale.imaging.crop_box import format_box, parse_box_text
from tfwhale.query.gallery import QueryError
from tfwhale.serve import corrections, feature_store, history, metadata_store
from tfwhale.serve.blobs import BlobStore, sha256_hex
from tfwhale.serve.candidates import Result
from tfwhale.serve.engine import Engine
from tfwhale.serve.inbox import save_answer, stored_answer
from tfwhale.serve.metadata import PhotoMeta, read_exif
from tfwhale.serve.originals import RecordsOriginals
from tfwhale.serve.reembed import reembed_if_needed
from tfwhale.serve.store import ConflictError, Photo, Store, now
from tfwhale.serve.twins import Twins, hash_missing, phash, to_text

logger = logging.getLogger(__name__)


class UploadError(ValueError):
    """An upload the catalogue does not accept (not an image, truncated, too large): nothing was stored."""


@dataclass(frozen=True)
class QueueItem:
    photo: str
    name: str
    best: str
    similarity: float
    margin: float  # best similarity minus its threshold: near 0 = uncertain


class Catalogue:
    def __init__(self, gallery_dir: str, catalogue_dir: str, run_dirs: list[str] | None = None) -> None:
        self.dir = Path(catalogue_dir)
        self.store = Store(catalogue_dir)
        self.blobs = BlobStore(catalogue_dir)
        self.engine = Engine.load(gallery_dir, run_dirs)
        arrays = self.engine.gallery.arrays
        self.test_names = arrays.test_names
        self.test_embeddings = arrays.test
        self._test_row = {name: row for row, name in enumerate(self.test_names)}
        # before anything is added to the searched gallery: stored vectors must be in this gallery's space
        reembed_if_needed(
            self.store, self.blobs, self.engine, dict(zip(self.test_names, self.test_embeddings, strict=True))
        )
        self._import_records()
        self.engine.name_photos(self.store.gallery_photo_hashes(), arrays.train_names)
        self.sync_engine()
        self.engine.set_sides(metadata_store.known_sides(self.store))
        self._test_sha = {name: sha for name, sha in self.store.gallery_photo_hashes().items()}
        self._queue: list[QueueItem] | None = None
        # a decision and the gallery update it makes go together: a correction's full relabel cannot
        # interleave with another decision's append (which it would drop, or add twice)
        self._changing = threading.Lock()
        added = self.store.conn.execute("SELECT sha256 FROM photos WHERE source NOT IN ('gallery', 'test')")
        self.twins = Twins(hash_missing(self.store, self.blobs), [sha for (sha,) in added])

    def sync_engine(self) -> None:
        """The one mapping the searched gallery answers by: each of predict's rows with the current
        individual of its photo (its records' id through the merges, for a row without a photo), then
        every assigned photo the catalogue embedded."""
        assigned, merges = self.store.assignments(), self.store.merges()
        labels = [
            assigned.get(sha) or history.resolve(label, merges)
            for sha, label in zip(self.engine.base_photos, self.engine.base_ids, strict=True)
        ]
        for row in self.store.conn.execute("SELECT id, species FROM individuals"):
            self.engine.species_of.setdefault(row["id"], row["species"])
        grown = self.store.grown_embeddings()
        self.engine.relabel(labels, grown, merges, self._grown_features(grown[0]))

    def _grown_features(self, photos: list[str]) -> list | None:
        """The local features of assigned photos, for the fused re-rank (None: the gallery does not
        re-rank): stored at upload, or made once from the stored original (photos assigned before
        they were kept), with the box it was uploaded with."""
        local = self.engine.path.local
        if local is None or not photos:
            return None if local is None else []

        def make(sha: str):
            photo = self.store.photo(sha)
            if photo is None or not self.blobs.has(sha):
                return None
            box = parse_box_text(photo.box) if photo.box else None
            try:
                return self.engine.path.local_features(self.blobs.get(sha), box, photo.name)
            except QueryError as err:
                logger.warning("%s: no local features (%s): found by its embedding alone", photo.name, err)
                return None

        return feature_store.features_of(self.store, photos, local.features_key, make)

    # -- the gallery's photos, once per gallery
    def _import_records(self) -> None:
        """Copy the records' photos (the crops predict embedded) into the catalogue, once per gallery."""
        manifest = self.engine.manifest
        if self.store.meta("gallery_embeddings_sha256") == manifest.embeddings_sha256:
            return
        from tfwhale.contracts.records import load_manifest

        try:
            records = load_manifest(manifest.records_root)
        except Exception as err:  # the catalogue still works, without pictures of the gallery
            logger.warning("%s: cannot read the records (%s); gallery photos will have no pictures",
                           manifest.records_root, err)  # fmt: skip
            records = None
        photos, individuals = [], {}
        species_of = self.engine.species_of
        for split in ("train", "test") if records else ():
            for name, jpeg, individual in _read_split(records, split):
                sha = self.blobs.put(jpeg)
                photos.append(Photo(sha, "gallery" if split == "train" else "test", name, sha, "",
                                    individual or None, now(), ""))  # fmt: skip
                if individual:
                    individuals[individual] = species_of.get(individual, "")
        for individual in set(self.engine.gallery.arrays.train_ids):
            individuals.setdefault(individual, species_of.get(individual, ""))
        # an export's metadata columns, when the records were built from one: the round trip keeps them
        metadata = RecordsOriginals.of_records(manifest.records_root).metadata() if records else {}
        with self.store.transaction() as conn:
            for individual, species in sorted(individuals.items()):
                conn.execute(
                    "INSERT OR IGNORE INTO individuals (id, species, origin, created_at) VALUES (?, ?, ?, ?)",
                    (individual, species, "gallery", now()),
                )
            for photo in photos:
                if self.store.add_photo(conn, photo) and photo.source == "gallery" and photo.name in metadata:
                    metadata_store.save(conn, photo.sha256, metadata[photo.name], "records", "")
            self.store.set_meta(conn, "gallery_embeddings_sha256", manifest.embeddings_sha256)
        logger.info("catalogue: imported %d photos of %d individuals", len(photos), len(individuals))

    # -- operations
    def upload(
        self, data: bytes, filename: str, box: tuple | None, reviewer: str, meta: PhotoMeta | None = None,
        how: str = "upload",
    ) -> tuple[str, Result]:  # fmt: skip
        """Identify one uploaded photo and keep it (unassigned) with its answer for a decision, in the
        inbox; UploadError if unusable. The catalogue's photos that are this one are not its candidates.

        Its metadata: `meta` as typed, its empty fields filled from the photo's EXIF (date, GPS); kept
        with a new photo (a photo uploaded again keeps the metadata it has)."""
        meta = (meta or PhotoMeta()).filled_from(read_exif(data))
        sha = sha256_hex(data)
        crop_hash = []  # the pHash of the crop, made inside the engine's identification

        def twins_of(crop: bytes) -> set[str]:
            crop_hash.append(phash(crop))
            return self.twins.index.of(sha, crop_hash[0]) | {sha}

        try:
            jpeg, result = self.engine.identify_bytes(data, box, filename, meta.side, exclude_of=twins_of)
        except QueryError as err:
            raise UploadError(str(err)) from None
        self.blobs.put(data)  # the original, as uploaded: what the export writes
        crop = self.blobs.put(jpeg)
        photo = Photo(sha, "upload", filename[:200], crop, format_box(box), None, now(), reviewer)
        with self.store.transaction() as conn:
            if self.store.add_photo(conn, photo, result.embedding):
                conn.execute("INSERT OR REPLACE INTO phashes VALUES (?, ?)", (sha, to_text(crop_hash[0])))
                if not meta.is_empty():
                    metadata_store.save(conn, sha, meta, how, reviewer)
            save_answer(conn, sha, self.engine.manifest.embeddings_sha256, result)
            if result.features is not None:  # the fused re-rank searches it once it is assigned
                feature_store.save(conn, sha, self.engine.path.local.features_key, result.features)
        self.twins.record(sha, crop_hash[0])
        self.engine.set_sides({sha: metadata_store.metadata(self.store, sha).side})
        return sha, result

    def twins_of(self, photo: str) -> set[str]:
        """The catalogue's other photos that are this same photo (by the perceptual hash of the crop)."""
        return self.twins.of(photo)

    def set_metadata(self, photo: str, meta: PhotoMeta, reviewer: str, how: str = "edit") -> None:
        """Save an edit of a photo's metadata (kept as a new version); ConflictError for an unknown photo."""
        metadata_store.set_metadata(self.store, photo, meta, how, reviewer)
        self.engine.set_sides({photo: meta.side})

    def embedding_of(self, photo: str) -> np.ndarray | None:
        row = self.store.conn.execute("SELECT embedding, source, name FROM photos WHERE sha256 = ?", (photo,))
        found = row.fetchone()
        if found is None:
            return None
        if found[0] is not None:
            return np.frombuffer(found[0], np.float32)
        row = self._test_row.get(found[2]) if found[1] == "test" else None
        if row is not None:
            return np.asarray(self.test_embeddings[row], np.float32)
        return None

    def result_for(self, photo: str, fresh: bool = False) -> Result | None:
        """Candidates of a photo the catalogue holds (an upload or one of predict's test photos): an
        undecided upload's answer as stored at upload time (unless `fresh`), else a search of its stored
        embedding, leaving out the photo itself and its twins."""
        embedding = self.embedding_of(photo)
        if embedding is None:
            return None
        found = self.store.photo(photo)
        if not fresh and found.individual_id is None:
            stored = stored_answer(self.store, photo, self.engine.manifest.embeddings_sha256, embedding)
            if stored is not None:
                result, answered_at = stored
                result.answered_at = answered_at
                path = self.engine.path  # the policy its threshold came from, as search sets it
                result.policy = path.policy if result.fused else path.embedding_policy
                return result
        side = metadata_store.metadata(self.store, photo).side
        exclude = {photo} | self.twins_of(photo)
        features = self._upload_features(found)
        return self.engine.search_stored(embedding[None], side, exclude=exclude, features=features)[0]

    def upload_features(self, photo: Photo) -> LocalFeatures | None:
        """An upload's local features, where the gallery re-ranks by them: kept at upload, or made once
        from its bytes as uploaded (with its box). None: not an upload, or none could be made."""
        if photo.source != "upload" or not self.blobs.has(photo.sha256):
            return None
        found = self._grown_features([photo.sha256])
        return None if not found or found[0] is NO_FEATURES else found[0]

    def _upload_features(self, photo: Photo) -> list | None:
        """A decided upload's features for its search, so that its candidates are scored as its upload
        was (fused P(same) at the same threshold), not by the embedding alone. None: the embedding
        alone."""
        features = self.upload_features(photo)
        return None if features is None else [features]

    def decide(
        self,
        photo: str,
        action: str,
        individual: str,
        note: str,
        reviewer: str,
        scores: list,
        species: str = "",
    ) -> int:
        """Record a decision; confirm/register add the photo to the gallery at once.

        ConflictError when it collides with a recorded one, ValueError for a bad id."""
        if action == "register" or (action == "confirm" and self.store.individual(individual) is None):
            individual = check_id(individual)  # an id already in an older catalogue stays usable
        embedding = self.embedding_of(photo)
        found = self.store.photo(photo)
        in_gallery = found is not None and found.source == "gallery"  # one of predict's rows already
        if action != "unresolved" and embedding is None and not in_gallery:
            raise ConflictError(f"photo {photo[:12]} has no embedding: upload it again")
        with self._changing:
            species = species.strip()[:100]
            decision = self.store.decide(
                photo, action, individual, note[:2000], reviewer[:100], scores, embedding, species
            )
            if action in ("confirm", "register") and not in_gallery:
                features = self._grown_features([photo])
                self.engine.add(photo, individual, embedding, species, features and features[0])
            elif action == "reassign":
                self.sync_engine()
            self._queue = None
        return decision

    def undo(self, decision: int, reviewer: str, note: str = "") -> dict[str, str | None]:
        """Take back a decision, a merge or a split; the searched gallery follows."""
        with self._changing:
            changed = corrections.undo(self.store, decision, reviewer[:100], note[:2000])
            return self._after_correction(changed)

    def merge(self, merged: str, kept: str, reviewer: str, note: str = "") -> dict[str, str | None]:
        with self._changing:
            changed = corrections.merge(self.store, merged, kept, reviewer[:100], note[:2000])
            return self._after_correction(changed)

    def split(
        self, individual: str, photos: list[str], other: str, reviewer: str, note: str = "", species: str = ""
    ) -> dict[str, str | None]:
        if self.store.individual(other) is None:
            other = check_id(other)
        with self._changing:
            changed = corrections.split(
                self.store, individual, photos, other, reviewer[:100], note[:2000], species.strip()[:100]
            )
            return self._after_correction(changed)

    def _after_correction(self, changed: dict[str, str | None]) -> dict[str, str | None]:
        self.sync_engine()
        self._queue = None
        return changed

    def proposed_id(self) -> str:
        return self.engine.free_id(self.store.individual_ids())

    def review_queue(self, wanted: metadata_store.MetaFilter | None = None) -> list[QueueItem]:
        """Predict's undecided test photos, most uncertain first (best similarity nearest its threshold);
        with a filter, only those whose metadata passes it."""
        if self._queue is None:
            self._queue = self._rank_tests()
        decided = self.store.decided_photos()
        queue = [
            item for item in self._queue
            if item.photo not in decided and not (self.twins_of(item.photo) & decided)
        ]  # fmt: skip
        if wanted is not None and not wanted.is_empty():
            passing = metadata_store.matching_photos(self.store, wanted)
            queue = [item for item in queue if item.photo in passing]
        return queue

    def _rank_tests(self) -> list[QueueItem]:
        items = []
        for start in range(0, len(self.test_names), 256):
            chunk = self.test_embeddings[start : start + 256]
            for offset, (label, score, threshold) in enumerate(self.engine.best(chunk)):
                name = self.test_names[start + offset]
                sha = self._test_sha.get(name)
                if sha is not None:
                    items.append(QueueItem(sha, name, label, score, score - threshold))
        return sorted(items, key=lambda item: (abs(item.margin), item.name))


def _read_split(records, split: str):
    """(image name, JPEG bytes, individual id or '') of every example of one split of the records."""
    import tensorflow as tf

    from tfwhale.contracts.records import parse_test_example, parse_train_example

    paths = records.shard_paths(split)
    if not paths:
        return
    parse = parse_train_example if split == "train" else parse_test_example
    for example in tf.data.TFRecordDataset(paths).map(parse):
        individual = example["individual_id"].numpy().decode() if split == "train" else ""
        yield example["image_name"].numpy().decode(), example["image"].numpy(), individual
