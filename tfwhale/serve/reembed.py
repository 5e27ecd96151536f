"""The catalogue (serve): when the gallery's vector space changes, re-embed the photos the app added.

A catalogue stores the embedding of every photo it added (uploads, decided test photos). Another gallery
(retrained models, another embedding size, another crop) embeds into another space: those vectors must
not be searched beside the new gallery's. Before the app answers anything, each such photo is cropped
again from its original and embedded with the new gallery's models, in batches of one transaction each;
the last photo done is recorded in the same transaction, so an interrupted start resumes there.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict

import numpy as np
from tqdm import tqdm

from tfwhale.contracts.gallery_manifest import GalleryManifest
from tfwhale.imaging.crop_box import parse_box_text
from tfwhale.query.gallery import QueryError
from tfwhale.serve.blobs import BlobStore
from tfwhale.serve.engine import Engine
from tfwhale.serve.store import Store

logger = logging.getLogger(__name__)

SPACE_KEY = "embedding_space"  # meta: the space the stored embeddings are in
PENDING_KEY = "reembed_pending"  # meta: {"space": ..., "after": rowid} while a re-embedding is under way
BATCH = 32


def space_of(manifest: GalleryManifest) -> str:
    """What decides the vector space of a gallery: its fold models, run weights, TTA and crop."""
    runs = [[run.weight, run.embedding_dim, sorted(run.folds.items())] for run in manifest.runs]
    body = {"runs": runs, "flip_tta": manifest.flip_tta, "image": asdict(manifest.image)}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def reembed_if_needed(store: Store, blobs: BlobStore, engine: Engine, test_embeddings: dict) -> int:
    """Bring every stored embedding into the engine's gallery space; returns how many were redone.

    test_embeddings: records test image name -> the new gallery's embedding of it (predict's own)."""
    space = space_of(engine.manifest)
    recorded = store.meta(SPACE_KEY)
    if recorded is None and store.meta("gallery_embeddings_sha256") == engine.manifest.embeddings_sha256:
        recorded = space  # a catalogue from before the space was recorded, still on its own gallery
    if recorded == space:
        if store.meta(SPACE_KEY) is None:
            _finish(store, space)
        return 0
    rows = _embedded_rows(store, after=_resume_point(store, space))
    if recorded is None and not rows and store.meta(PENDING_KEY) is None:
        _finish(store, space)  # a new catalogue, or one that never embedded a photo
        return 0
    if rows:
        logger.warning(
            "the gallery's models changed since this catalogue stored its photos' embeddings: re-embedding "
            "%d photo(s) with the new gallery's models before answering (resumable)",
            len(rows),
        )
    done = 0
    with tqdm(total=len(rows), desc="re-embedding catalogue photos", unit="photo") as bar:
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            _reembed_batch(store, blobs, engine, batch, test_embeddings, space)
            done += len(batch)
            bar.update(len(batch))
    _finish(store, space)
    return done


def _resume_point(store: Store, space: str) -> int:
    pending = store.meta(PENDING_KEY)
    if pending is None:
        return 0
    state = json.loads(pending)
    return int(state["after"]) if state.get("space") == space else 0


def _embedded_rows(store: Store, after: int) -> list[tuple]:
    return store.conn.execute(
        "SELECT rowid, sha256, source, name, box, crop_sha256 FROM photos "
        "WHERE embedding IS NOT NULL AND rowid > ? ORDER BY rowid",
        (after,),
    ).fetchall()


def _reembed_batch(store, blobs, engine: Engine, batch, test_embeddings: dict, space: str) -> None:
    updates = []
    for _, sha, source, name, box, crop_sha in batch:
        try:
            updates.append(
                (*_new_embedding(blobs, engine, sha, source, name, box, crop_sha, test_embeddings), sha)
            )
        except (QueryError, ValueError, OSError) as err:
            # the decision stays recorded; the photo is left out of the search rather than mixed in
            logger.error("%s (%s): cannot be re-embedded (%s); left out of the search", name, sha[:12], err)
            updates.append((None, crop_sha, sha))
    with store.transaction() as conn:
        for embedding, crop_sha, sha in updates:
            blob = None if embedding is None else np.asarray(embedding, np.float32).tobytes()
            conn.execute(
                "UPDATE photos SET embedding = ?, crop_sha256 = ? WHERE sha256 = ?", (blob, crop_sha, sha)
            )
        store.set_meta(conn, PENDING_KEY, json.dumps({"space": space, "after": batch[-1][0]}))


def _new_embedding(blobs, engine: Engine, sha, source, name, box, crop_sha, test_embeddings: dict):
    """(embedding, crop hash) of one stored photo in the engine's space."""
    if source == "test" and name in test_embeddings:
        return np.asarray(test_embeddings[name], np.float32), crop_sha
    original = sha if blobs.has(sha) else crop_sha  # uploads keep their original; records photos their crop
    jpeg, image = engine.prepare(blobs.get(original), parse_box_text(box) if box else None, name)
    embedding = engine.embed(image[None], [name]).combined[0]
    return embedding, (blobs.put(jpeg) if source == "upload" else crop_sha)


def _finish(store: Store, space: str) -> None:
    with store.transaction() as conn:
        store.set_meta(conn, SPACE_KEY, space)
        conn.execute("DELETE FROM meta WHERE key = ?", (PENDING_KEY,))
