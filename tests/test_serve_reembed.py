"""The catalogue on another gallery: the photos it added are re-embedded in its space before it answers."""

from __future__ import annotations

import numpy as np
import pytest

from tests.run_fixture import make_run
from tests.serve_fixture import photo_bytes, second_photo
from tfwhale import predict
from tfwhale.contracts.gallery_manifest import load_gallery_manifest
from tfwhale.contracts.records import load_manifest
from tfwhale.serve import reembed
from tfwhale.serve.catalogue import Catalogue


def _other_gallery(serve_gallery, root, dim: int, seed: int) -> str:
    """A predict output on the same records with another (re)trained run."""
    _, out = serve_gallery
    records = load_gallery_manifest(out).records_root
    run_dir = make_run(str(root / f"run-{dim}-{seed}"), load_manifest(records), dim=dim, seed=seed)
    other = str(root / f"predict-{dim}-{seed}")
    argv = ["--runs", run_dir, "--records", records, "--out", other, "--tta", "flip", "--examples", "0"]
    assert predict.main(argv) == 0
    return other


def _register_two(catalogue: Catalogue) -> list[str]:
    photos = []
    for seed, name in ((21, "Moby"), (22, "Nemo")):
        sha, result = catalogue.upload(photo_bytes(seed), f"{name}.jpg", None, "me")
        catalogue.decide(sha, "register", name, "", "me", result.scores())
        photos.append(sha)
    return photos


@pytest.mark.parametrize("dim, seed", [(16, 7), (8, 7)], ids=["retrained-same-size", "another-size"])
def test_registered_photos_are_found_again_on_a_retrained_gallery(serve_gallery, tmp_path, dim, seed):
    catalogue_dir = str(tmp_path / "catalogue")
    first = Catalogue(serve_gallery[1], catalogue_dir)
    photos = _register_two(first)
    del first
    other = _other_gallery(serve_gallery, tmp_path, dim, seed)
    second = Catalogue(other, catalogue_dir)
    stored = second.embedding_of(photos[0])
    assert stored.shape == (dim,)  # in the new space, never the old vectors
    _, again = second.upload(second_photo(photo_bytes(21)), "again.jpg", None, "me")
    assert again.candidates[0].label == "Moby"
    assert again.candidates[0].similarity == pytest.approx(1.0, abs=1e-3)
    assert second.store.meta(reembed.SPACE_KEY) == reembed.space_of(second.engine.manifest)
    # and back on the first gallery: re-embedded once more
    third = Catalogue(serve_gallery[1], catalogue_dir)
    assert third.embedding_of(photos[1]).shape == (16,)
    _, back = third.upload(second_photo(photo_bytes(22)), "back.jpg", None, "me")
    assert back.candidates[0].label == "Nemo"


def test_an_interrupted_reembedding_resumes_where_it_stopped(serve_gallery, tmp_path, monkeypatch):
    catalogue_dir = str(tmp_path / "catalogue")
    photos = _register_two(Catalogue(serve_gallery[1], catalogue_dir))
    other = _other_gallery(serve_gallery, tmp_path, 8, 3)
    monkeypatch.setattr(reembed, "BATCH", 1)
    calls = []
    real = reembed._new_embedding

    def fail_on_second(*args):
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process killed mid-way
        return real(*args)

    monkeypatch.setattr(reembed, "_new_embedding", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        Catalogue(other, catalogue_dir)
    monkeypatch.setattr(reembed, "_new_embedding", lambda *args: calls.append(args[2]) or real(*args))
    resumed = Catalogue(other, catalogue_dir)
    assert calls == [photos[0], photos[1], photos[1]]  # the first batch was committed, not done again
    assert all(resumed.embedding_of(p).shape == (8,) for p in photos)
    assert np.isfinite(resumed.embedding_of(photos[0])).all()
