"""Local-feature re-rank end to end: the leave-one-out fit (never a self-pair), a day-one gallery made with
SIFT features answering a new shot of a gallery individual, identify --explain's pictures, and the
gallery contract's rerank section (older galleries load without one)."""

from __future__ import annotations

import dataclasses
import json
import re
import threading

import cv2
import numpy as np
import pytest

from tests.textures import texture
from tfwhale.contracts.gallery_manifest import GalleryError, load_gallery_manifest
from tfwhale.contracts.local_features import FeatureSet
from tfwhale.matching.aggregate import RerankSettings
from tfwhale.matching.features import SiftSettings, extract_sift
from tfwhale.matching.pairs import PairSettings
from tfwhale.matching.rerank import Calibrations, LocalGallery, fit_calibrations, leave_one_out
from tfwhale.query.local import MatchSettings

SIZE = 64  # model input: small keeps the ImageNet Lite0 passes fast; local features use 512 px crops


def shot(image: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """Another photo of the same markings: turned, scaled, the middle 90 % kept."""
    h, w = image.shape[:2]
    warped = cv2.warpAffine(
        image, cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale), (w, h), borderValue=(128, 128, 128)
    )
    return np.ascontiguousarray(warped[h // 20 : h - h // 20, w // 20 : w - w // 20])


SHOTS = ((0, 1.0), (15, 0.9), (-12, 1.1))
NEW_SHOT = (25, 0.85)


def _features(images):
    settings = SiftSettings(match_size=320, max_keypoints=400)
    return FeatureSet.from_photos(
        [str(i) for i in range(len(images))], [extract_sift(i, settings) for i in images]
    )


def test_leave_one_out_never_meets_itself_and_calibrates():
    # individual 0: two unrelated textures (only the photo itself would match it); 1, 2, 3: two shots each;
    # 4: a single photo (nothing left of it when it is the query)
    images = [texture(10), texture(11)]
    owners = [0, 0]
    for ind, seed in ((1, 1), (2, 2), (3, 3)):
        images += [shot(texture(seed), *SHOTS[0]), shot(texture(seed), *SHOTS[1])]
        owners += [ind, ind]
    images.append(texture(4))
    owners.append(4)
    gallery = LocalGallery(_features(images), np.asarray(owners), 5)
    embeddings = np.eye(len(images), dtype=np.float32)  # the embedding says nothing: local evidence decides
    loo = leave_one_out(embeddings, gallery, RerankSettings(), PairSettings())
    assert loo.inliers.shape == (len(images), 5)
    # a self-pair would give individual 0 hundreds of inliers and votes; the other texture gives few
    assert loo.inliers[0, 0] < 15 and loo.inliers[1, 0] < 15
    assert all(loo.inliers[row, owners[row]] > 30 for row in range(2, 8))  # the other shot verifies
    assert not loo.scored[8, 4] and loo.inliers[8, 4] == 0 and loo.votes[8, 4] == 0  # nothing left of 4
    assert loo.scored[8, :4].all() and loo.scored[0].all()
    calibrations = fit_calibrations(loo)
    assert calibrations.inliers(np.array([100.0]))[0] > calibrations.inliers(np.array([0.0]))[0]


def _write_folder(root) -> tuple[str, str, str]:
    """ID/photo folders: 5 individuals x 3 shots (JPEG); plus a new shot of individual ind-2 and a photo of
    an animal the gallery has not seen, outside the folder."""
    photos = root / "photos"
    for ind in range(5):
        (photos / f"ind-{ind}").mkdir(parents=True)
        for n, (angle, scale) in enumerate(SHOTS):
            image = shot(texture(100 + ind, 400), angle, scale)
            cv2.imwrite(str(photos / f"ind-{ind}" / f"{n}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    second = str(root / "new_shot_of_ind-2.jpg")
    cv2.imwrite(second, cv2.cvtColor(shot(texture(102, 400), *NEW_SHOT), cv2.COLOR_RGB2BGR))
    stranger = str(root / "stranger.jpg")
    cv2.imwrite(stranger, cv2.cvtColor(texture(999, 400), cv2.COLOR_RGB2BGR))
    return str(photos), second, stranger


@pytest.fixture(scope="module")
def sift_gallery(tmp_path_factory):
    from tfwhale.gallery import __main__ as gallery_cli

    root = tmp_path_factory.mktemp("sift_gallery")
    photos, second, stranger = _write_folder(root)
    out = str(root / "gallery")
    argv = ["--photos", photos, "--out", out, "--size", str(SIZE), "--workers", "1", "-q"]
    assert gallery_cli.main(argv) == 0
    return out, second, stranger, root


def test_day_one_gallery_with_sift_answers_a_new_shot_first_with_high_fused_p(sift_gallery, capsys):
    from tfwhale import identify

    out, second, stranger, _ = sift_gallery
    manifest = load_gallery_manifest(out)
    assert (
        manifest.rerank == "local" and manifest.extra["label"] == "untrained gallery (ImageNet Lite0 + SIFT)"
    )
    assert "fused P" in manifest.threshold.source and manifest.embedding_threshold is not None
    assert manifest.local.sift == dataclasses.asdict(SiftSettings())  # the library's defaults, recorded
    assert identify.main([second, stranger, "--gallery", out, "--json"]) == 0
    known, unseen = json.loads(capsys.readouterr().out)
    first = known["predictions"][0]
    assert first["label"] == "ind-2" and first["similarity"] > 0.8
    others = [p["similarity"] for p in known["predictions"][1:] if p["similarity"] is not None]
    assert max(others) < first["similarity"] - 0.3
    best_unseen = max(p["similarity"] for p in unseen["predictions"] if p["similarity"] is not None)
    assert best_unseen < first["similarity"] - 0.3


def test_identify_explain_draws_the_verified_matches(sift_gallery, capsys):
    from tfwhale import identify

    out, second, stranger, root = sift_gallery
    pictures = root / "explain"
    assert identify.main([second, stranger, "--gallery", out, "--explain", str(pictures)]) == 0
    assert sorted(p.name for p in pictures.iterdir()) == ["000_new_shot_of_ind-2.png", "001_stranger.png"]
    picture = cv2.imread(str(pictures / "000_new_shot_of_ind-2.png"))
    assert picture.shape[0] > 320 and picture.shape[1] > 2 * 320  # a row per candidate, two crops a row
    # the first row's matches are drawn in pure green (BGR 0, 255, 0), crossing the gap between the crops
    gap = picture[28:348, 322:326]
    green = (gap[..., 0] == 0) & (gap[..., 1] == 255) & (gap[..., 2] == 0)
    assert green.sum() >= 5
    unseen = cv2.imread(str(pictures / "001_stranger.png"))
    gap = unseen[28:348, 322:326]
    assert ((gap[..., 0] == 0) & (gap[..., 1] == 255) & (gap[..., 2] == 0)).sum() < green.sum()


def test_examples_png_draws_the_answers_verified_photo_with_its_matches(sift_gallery):
    from tfwhale.inference.examples import ExampleRow, verified_photos
    from tfwhale.query.path import QueryPath

    out, second, _, _ = sift_gallery
    path = QueryPath.load(out)
    with open(second, "rb") as f:
        data = f.read()
    features = path.local_features(data, None, "second.jpg")
    _, image = path.crop(data, None, "second.jpg")
    reranked = path.rerank(path.embed(image[None], ["q"]), ["q"], [features])
    answers = {"q": reranked.ranked.labels[0][:3]}
    verified = verified_photos(path.local, ["q"], [features], reranked.evidence, answers)
    found = verified["q", "ind-2"]
    assert found.photo in path.gallery.arrays.train_names and found.match.inliers >= 20
    owner = dict(zip(path.gallery.arrays.train_names, path.gallery.arrays.train_ids, strict=True))
    assert owner[found.photo] == "ind-2" and found.query_size == features.image_size
    assert all(v.match.inliers < found.match.inliers for k, v in verified.items() if k[1] != "ind-2")
    thumbnail = np.full((SIZE, SIZE, 3), 128, np.uint8)
    row = ExampleRow("q", image, None, [("ind-2", 0.9, thumbnail)], verified=(found,))
    drawn = row.answer_image(0)
    assert drawn.shape[1] > 2 * SIZE and not np.array_equal(drawn[:, -SIZE:], drawn[:, -SIZE:] * 0 + 128)


def test_explain_on_a_gallery_without_local_features_says_why(sift_gallery, tmp_path, caplog):
    from tfwhale import identify
    from tfwhale.gallery import __main__ as gallery_cli

    _, second, _, root = sift_gallery
    out = str(tmp_path / "plain")
    argv = ["--photos", str(root / "photos"), "--out", out, "--size", str(SIZE), "--workers", "1", "-q"]
    assert gallery_cli.main([*argv, "--no-local-features"]) == 0
    manifest = load_gallery_manifest(out)
    assert manifest.rerank == "none" and manifest.local is None
    assert manifest.extra["label"] == "untrained gallery (ImageNet Lite0)"
    assert identify.main([second, "--gallery", out, "--explain", str(tmp_path / "x")]) == 1
    assert "made without local features" in caplog.text


def test_older_gallery_json_loads_without_rerank_and_a_changed_feature_file_is_refused(
    sift_gallery, tmp_path
):
    import shutil

    out, *_ = sift_gallery
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    path = copy / "gallery.json"
    body = json.loads(path.read_text())
    older = {k: v for k, v in body.items() if k not in ("rerank", "local", "embedding_threshold")}
    path.write_text(json.dumps(older))
    manifest = load_gallery_manifest(str(copy))
    assert manifest.rerank == "none" and manifest.local is None and manifest.embedding_threshold is None
    # a gallery made before the match crop was recorded: its features were stretched square, so are queries
    local = body["local"]
    made_before = {**local, "sift": {k: v for k, v in local["sift"].items() if k != "crop"}}
    path.write_text(json.dumps({**body, "local": made_before}))
    assert MatchSettings.of(load_gallery_manifest(str(copy)).local).sift.crop == "square"
    assert MatchSettings.of(load_gallery_manifest(out).local).sift.crop == "aspect"
    path.write_text(json.dumps({**older, "rerank": "local"}))
    with pytest.raises(GalleryError, match="without the local features"):
        load_gallery_manifest(str(copy))
    path.write_text(json.dumps(body))
    features = copy / body["local"]["features_file"]
    features.write_bytes(features.read_bytes()[:-10])
    with pytest.raises(GalleryError, match="missing or changed"):
        load_gallery_manifest(str(copy))


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def _verified_first(result, label: str, photo: str) -> float:
    """The fused P of `label`, asserted first and verified by local matches on `photo` (a grown one)."""
    first = result.candidates[0]
    assert first.label == label, [(c.label, c.similarity) for c in result.candidates[:3]]
    assert result.verified.get(label) == photo  # its best verified photo: inliers > 0 on the grown photo
    return first.similarity


def test_a_query_whose_sift_fails_in_its_thread_is_refused_as_the_photo_it_is(sift_gallery):
    from tfwhale.query.gallery import QueryError
    from tfwhale.serve.engine import Engine

    out, second, _, _ = sift_gallery
    engine = Engine.load(out)

    def unreadable(data, box, name):
        raise QueryError(f"{name}: no keypoints could be read")

    engine.path.local_features = unreadable
    with open(second, "rb") as f, pytest.raises(QueryError, match=r"second\.jpg: no keypoints"):
        engine.identify_bytes(f.read(), None, "second.jpg")


def test_catalogue_answers_by_the_fused_p_and_grown_individuals_by_their_local_features(
    sift_gallery, tmp_path
):
    pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra")
    from tfwhale.serve.catalogue import Catalogue

    out, second, stranger, _ = sift_gallery
    catalogue = Catalogue(out, str(tmp_path / "catalogue"))
    policy = load_gallery_manifest(out).threshold
    path, sift_threads = catalogue.engine.path, []
    made = path.local_features

    def recorded(*args):  # which thread makes the query's SIFT
        sift_threads.append(threading.current_thread())
        return made(*args)

    path.local_features = recorded
    with open(second, "rb") as f:
        _, result = catalogue.upload(f.read(), "second.jpg", None, "tester")
    del path.local_features
    first = result.candidates[0]
    assert first.label == "ind-2" and first.similarity > 0.8
    assert result.threshold == pytest.approx(policy.value)  # held to the fused policy
    assert {"decode", "embed", "local_features", "local_features_wait", "search"} == set(result.timings)
    assert len(sift_threads) == 1 and sift_threads[0] is not threading.current_thread()  # beside the embed
    with open(stranger, "rb") as f:
        sha, _ = catalogue.upload(f.read(), "stranger.jpg", None, "tester")
    catalogue.decide(sha, "register", "Newcomer-1", "", "tester", [])
    # the registered photo itself is never its own candidate, in the local re-rank either
    assert "Newcomer-1" not in catalogue.result_for(sha, fresh=True).verified
    # another shot of it (turned, scaled): its registered individual is found by its local features too,
    # as a gallery individual is, not by its similarity alone (P of zero inliers and votes)
    calibrations = Calibrations.from_dict(load_gallery_manifest(out).local.calibrations)
    new_shot = _jpeg(shot(texture(999, 400), *NEW_SHOT))
    _, again = catalogue.upload(new_shot, "stranger-2.jpg", None, "tester")
    p_same = _verified_first(again, "Newcomer-1", sha)
    cosine = again.candidates[0].photos[0][1]
    none = np.zeros(1)
    assert p_same > 0.8 and p_same > calibrations.fused(np.array([cosine]), none, none)[0] + 0.2
    assert again.candidates[0].similarity >= policy.value  # over the threshold: not a new individual

    # after a restart the stored features answer as before (the same shot asked again: a fresh answer);
    # photos assigned before features were kept get them made from the stored original
    restarted = Catalogue(out, str(tmp_path / "catalogue"))
    _, after = restarted.upload(new_shot, "stranger-2.jpg", None, "tester")
    assert _verified_first(after, "Newcomer-1", sha) == pytest.approx(p_same, abs=1e-6)
    restarted.store.conn.execute("DELETE FROM local_features")
    remade = Catalogue(out, str(tmp_path / "catalogue"))
    assert remade.store.conn.execute("SELECT COUNT(*) FROM local_features").fetchone()[0] == 1
    _, remade_answer = remade.upload(new_shot, "stranger-2.jpg", None, "tester")
    assert _verified_first(remade_answer, "Newcomer-1", sha) == pytest.approx(p_same, abs=1e-6)

    # a second id registered for the same animal, then merged away: the kept id answers, by either photo
    twin_sha, _ = remade.upload(_jpeg(shot(texture(999, 400), 30, 0.9)), "stranger-5.jpg", None, "tester")
    remade.decide(twin_sha, "register", "Newcomer-2", "", "tester", [])
    remade.merge("Newcomer-2", "Newcomer-1", "tester")
    _, merged = remade.upload(_jpeg(shot(texture(999, 400), 28, 0.88)), "stranger-6.jpg", None, "tester")
    first = merged.candidates[0]
    assert first.label == "Newcomer-1" and merged.verified.get("Newcomer-1") in {sha, twin_sha}
    assert "Newcomer-2" not in [c.label for c in merged.candidates]
    assert first.similarity > 0.8


def test_catalogue_compare_view_draws_the_gallery_features_on_the_original_and_says_p_same(
    sift_gallery, tmp_path
):
    pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra")
    from fastapi.testclient import TestClient

    from tests.test_serve_api import HOSTS, upload
    from tfwhale.serve.app import create_app
    from tfwhale.serve.catalogue import Catalogue

    out, second, _, root = sift_gallery
    client = TestClient(create_app(Catalogue(out, str(tmp_path / "catalogue")), hosts=HOSTS))
    client.get("/")  # the CSRF cookie
    with open(second, "rb") as f:
        html = upload(client, f.read(), "second.jpg").text
    assert "P(same) 0." in html and "similarity 0." not in html  # fused: calibrated probabilities
    sha = html.split('data-photo="', 1)[1].split('"', 1)[0]
    gallery_photo = html.split(f"/compare?query={sha}&amp;photo=", 1)[1].split('"', 1)[
        0
    ]  # ind-2's best photo
    answer = client.get(f"/api/matches?query={sha}&photo={gallery_photo}").json()
    assert answer["inliers"] >= 20 and answer["photo"]["features"] == "gallery"
    assert answer["query"]["features"] == "upload"  # kept at upload, not computed again
    assert answer["photo"]["url"] == f"/compare/original/{gallery_photo}" and answer["photo"]["original"]
    original = client.get(answer["photo"]["url"])
    name = answer["photo"]["name"]
    assert original.status_code == 200 and original.content == (root / "photos" / name).read_bytes()
    pairs = np.asarray(answer["pairs"])
    assert (pairs >= 0).all() and (pairs[:, 2] <= answer["photo"]["width"]).all()
    assert (pairs[:, 3] <= answer["photo"]["height"]).all()
    assert 'data-matches="on"' in client.get(f"/compare?query={sha}&photo={gallery_photo}").text
    # the first row's match strip shows ind-2's best verified photo: none of its photos verifies more
    row = html.split('class="candidate"', 2)[1]
    strip_photo = row.split('class="show-matches"', 1)[1].split('data-photo="', 1)[1].split('"', 1)[0]
    thumbs = re.findall(rf"/compare\?query={sha}&amp;photo=([0-9a-f]{{64}})", row)
    inliers = {
        p: client.get(f"/api/matches?query={sha}&photo={p}").json()["inliers"] for p in {*thumbs, strip_photo}
    }
    assert inliers[strip_photo] == max(inliers.values()) >= 20


def test_explain_draws_a_gallery_photo_cropped_by_the_box_its_features_were_taken_with(tmp_path):
    from types import SimpleNamespace

    from tfwhale.imaging.photo_crop import ImageSettings
    from tfwhale.inference.match_pictures import _gallery_crop
    from tfwhale.matching.photo import match_crop

    _, jpeg = cv2.imencode(".jpg", texture(7, 400))
    (tmp_path / "a.jpg").write_bytes(jpeg.tobytes())
    sift = SiftSettings()
    local = SimpleNamespace(
        photos_root=str(tmp_path), image=ImageSettings(224), settings=MatchSettings(sift=sift)
    )
    boxed = _gallery_crop(local, "a.jpg", "40 60 240 200")
    whole = _gallery_crop(local, "a.jpg", "")
    assert np.array_equal(boxed, match_crop(jpeg.tobytes(), (40, 60, 240, 200), ImageSettings(224), sift))
    assert np.array_equal(whole, match_crop(jpeg.tobytes(), None, ImageSettings(224), sift))
    assert boxed.shape != whole.shape  # the box's 200 x 140 (enlarged) keeps its own aspect ratio


def test_a_merged_away_individuals_gallery_photos_still_verify_for_the_id_it_was_merged_into(
    sift_gallery, tmp_path
):
    pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra")
    from tfwhale.serve.catalogue import Catalogue

    out, second, _, _ = sift_gallery
    catalogue = Catalogue(out, str(tmp_path / "catalogue"))
    with open(second, "rb") as f:
        data = f.read()
    _, before = catalogue.upload(data, "second.jpg", None, "tester")
    assert before.candidates[0].label == "ind-2"
    catalogue.merge("ind-2", "ind-4", "tester")  # ind-2's gallery photos now belong to ind-4
    _, result = catalogue.engine.identify_bytes(data, None, "second-again.jpg")
    first = result.candidates[0]
    # answered by ind-4 on ind-2's own verified photos: its fused P at least as high as ind-2's was
    assert first.label == "ind-4" and first.similarity >= before.candidates[0].similarity - 1e-6
    assert "ind-2" not in [c.label for c in result.candidates]
    assert result.verified.get("ind-4") is not None  # its best verified photo: one of ind-2's


def test_grown_photos_are_searched_as_if_one_index_and_adding_one_rebuilds_only_the_recent(monkeypatch):
    from tfwhale.matching import grown as grown_module
    from tfwhale.matching.lnbnn import lnbnn_votes

    monkeypatch.setattr(grown_module, "RECENT_PHOTOS", 3)
    images = [shot(texture(200 + i), *SHOTS[0]) for i in range(8)]
    every = _features(images)
    base = LocalGallery(grown_module.photo_range(every, 0, 3), np.arange(3), 8)
    gallery = None
    for n in range(1, 6):  # grown photos 3..7 added one at a time
        before = gallery
        gallery = base.with_grown(grown_module.photo_range(every, 3, 3 + n), np.arange(3 + n), 8, gallery)
        gallery.grown.settle()  # the seal asked for at n = 4 runs in the background: swapped in here
        parts = gallery.grown.parts
        if n in (2, 3, 5):  # after a seal (at n = 1 and n = 4, the recent photos reached 3): sealed kept
            assert parts[0] is before.grown.parts[0] and [p[0] for p in parts] == [0, parts[0][2]]
    assert len(gallery) == 8 and gallery.name(7) == "7" and len(gallery.photo(7)) == len(every[7])
    for row in (1, 4, 7):  # a gallery photo, a sealed grown one and a recent one: each finds itself
        found = gallery.neighbours(every[row], 12)
        assert found.photo.shape == (len(every[row]), 12) and (np.diff(found.distance, axis=1) >= 0).all()
        votes = lnbnn_votes(found, len(gallery), 1)
        assert int(np.argmax(votes)) == row
        assert (found.photo[:, 0] == row).mean() > 0.9  # its own descriptors are the nearest


def test_a_seal_runs_beside_the_searches_and_no_grown_photo_is_missed_meanwhile(monkeypatch):
    from tfwhale.matching import grown as grown_module
    from tfwhale.matching.lnbnn import lnbnn_votes

    monkeypatch.setattr(grown_module, "RECENT_PHOTOS", 3)
    every = _features([shot(texture(200 + i), *SHOTS[0]) for i in range(8)])
    base = LocalGallery(grown_module.photo_range(every, 0, 3), np.arange(3), 8)

    def grown(n, gallery):  # the gallery with its first n grown photos (rows 3.., each its own owner)
        return base.with_grown(grown_module.photo_range(every, 3, 3 + n), np.arange(3 + n), 8, gallery)

    def answers(gallery):  # each photo's best-voted row
        votes = [
            lnbnn_votes(gallery.neighbours(every[row], 12), len(gallery), 1) for row in range(len(gallery))
        ]
        return [int(np.argmax(v)) for v in votes]

    gallery = grown(1, None)  # the first index is sealed at once
    asked, release, seal = threading.Event(), threading.Event(), grown_module._sealed

    def held_seal(features):  # the background seal waits until the searches below are done
        asked.set()
        assert release.wait(60)
        return seal(features)

    monkeypatch.setattr(grown_module, "_sealed", held_seal)
    for n in (2, 3, 4):  # at 4, the recent photos (1..4) reach 3: a seal is asked for, not waited for
        gallery = grown(n, gallery)
    assert asked.wait(60) and [part[0] for part in gallery.grown.parts] == [0, 1]
    during = answers(gallery)
    assert during == list(range(7))  # the old sealed index + a recent one over the rest: every photo
    gallery = grown(5, gallery)  # an addition while the seal runs: it covers every photo too
    assert [part[0] for part in gallery.grown.parts] == [0, 1] and answers(gallery) == list(range(8))
    release.set()
    gallery.grown.settle()  # swapped into the newest index: sealed over 4 grown photos, recent the 5th
    assert [part[:1] + part[2:] for part in gallery.grown.parts] == [(0, 4), (4, 5)]
    assert answers(gallery) == list(range(8))
    assert answers(grown(4, gallery))[:7] == during  # the answers after the seal are those before


def test_a_seal_that_ends_while_the_next_index_is_built_is_swapped_into_that_one(monkeypatch):
    """The seal reads the chain's newest index when it ends; an index built meanwhile (it read no
    finished seal yet, and found the seal's thread still alive) must still take it, or it searches the old
    sealed index and an ever larger recent one until the next addition."""
    from tfwhale.matching import grown as grown_module

    monkeypatch.setattr(grown_module, "RECENT_PHOTOS", 3)
    every = _features([shot(texture(200 + i), *SHOTS[0]) for i in range(8)])
    base = LocalGallery(grown_module.photo_range(every, 0, 3), np.arange(3), 8)

    def grown(n, gallery):
        return base.with_grown(grown_module.photo_range(every, 3, 3 + n), np.arange(3 + n), 8, gallery)

    test_thread, release, in_take, go = (
        threading.get_ident(),
        threading.Event(),
        threading.Event(),
        threading.Event(),
    )
    seal, take, index = grown_module._sealed, grown_module.GrownIndex.take, grown_module._index
    armed = []

    def held_seal(features):
        assert release.wait(60)
        return seal(features)

    def held_take(self, names, sealed):  # the seal's thread hands its index to the newest it saw, slowly
        if threading.get_ident() != test_thread:
            in_take.set()
            assert go.wait(60)
        take(self, names, sealed)

    def building(features):  # the next index's recent part is built while the seal ends
        if armed and threading.get_ident() == test_thread:
            release.set()
            assert in_take.wait(60)
        return index(features)

    gallery = grown(1, None)  # the first index is sealed at once
    monkeypatch.setattr(grown_module, "_sealed", held_seal)
    monkeypatch.setattr(grown_module.GrownIndex, "take", held_take)
    monkeypatch.setattr(grown_module, "_index", building)
    for n in (2, 3, 4):  # at 4 a seal over the 4 grown photos is asked for (held)
        gallery = grown(n, gallery)
    armed.append(True)
    gallery = grown(5, gallery)  # built while that seal ends
    armed.clear()
    go.set()
    gallery.grown.settle()
    assert [part[:1] + part[2:] for part in gallery.grown.parts] == [(0, 4), (4, 5)]


def test_a_relabelled_path_with_grown_photos_owns_every_row_once(sift_gallery):
    from tfwhale.contracts.local_features import load_feature_set
    from tfwhale.query.local import LocalRerankPath, Owners

    out = sift_gallery[0]
    manifest = load_gallery_manifest(out)
    names = load_feature_set(f"{out}/{manifest.local.features_file}").names
    ids = [f"ind-{row % 2}" for row in range(len(names))]
    loaded = LocalRerankPath(out, manifest, names, ids)
    owners = Owners.of(["b", "a", "b", "c"])
    assert owners.individuals.tolist() == ["a", "b", "c"] and owners.codes.tolist() == [1, 0, 1, 2]
    relabelled = ["ind-7", *ids[1:]]  # the first photo reassigned; one grown photo of a new individual
    path = loaded.relabelled(relabelled, ["grown-1"], [loaded.gallery.photo(0)], ["ind-9"])
    assert path.individuals.tolist() == ["ind-0", "ind-1", "ind-7", "ind-9"]
    every = [*relabelled, "ind-9"]
    assert path.gallery.photo_individual.tolist() == [path.individuals.tolist().index(i) for i in every]
    assert len(path.gallery) == len(names) + 1 and path.gallery.name(len(names)) == "grown-1"
    assert path.gallery.index is loaded.gallery.index  # the gallery's index shared, not built again
    assert loaded.individuals.tolist() == ["ind-0", "ind-1"] and loaded.gallery.grown is None  # untouched
    again = path.with_grown([], [], [], path)  # grown photos replaced: the relabelled ones kept
    assert again.individuals.tolist() == ["ind-0", "ind-1", "ind-7"] and len(again.gallery) == len(names)


def test_photos_of_the_querys_side_are_verified_first():
    from tfwhale.matching.rerank import query_evidence

    # individual 0: another shot of the query's markings (tagged as the other side) and an unrelated
    # photo (the query's side); individual 1: one more unrelated photo
    images = [shot(texture(300, 400), 15, 0.9), texture(301, 400), texture(302, 400)]
    gallery = LocalGallery(_features(images), np.array([0, 0, 1]), 2)
    query = _features([shot(texture(300, 400), -10, 1.05)])[0]
    one_each = RerankSettings(photos_per_individual=1, shortlist_m=1)
    cosine = np.array([0.5, 0.4])
    plain = query_evidence(query, cosine, gallery, one_each, PairSettings())
    assert plain.best[0][0] == 0 and plain.inliers[0] > 30  # its best-voted photo: the other shot
    sided = query_evidence(
        query, cosine, gallery, one_each, PairSettings(), other_side=np.array([True, False, False])
    )
    assert 0 not in sided.best or sided.best[0][0] == 1  # the same-side photo took the one slot
    assert sided.inliers[0] < 15
    both = RerankSettings(photos_per_individual=2, shortlist_m=1)  # room for both: the other side too
    assert (
        query_evidence(
            query, cosine, gallery, both, PairSettings(), other_side=np.array([True, False, False])
        ).inliers[0]
        == plain.inliers[0]
    )


def test_the_catalogue_tells_the_rerank_which_photos_show_another_side(sift_gallery, tmp_path):
    pytest.importorskip("fastapi", reason="the catalogue app needs the 'serve' extra")
    from tfwhale.serve.catalogue import Catalogue

    out, second, _, _ = sift_gallery
    engine = Catalogue(out, str(tmp_path / "catalogue")).engine
    right, unknown = engine.base_photos[0], engine.base_photos[1]
    engine.set_sides({right: "right", unknown: "unknown"})
    other = engine._other_side(engine._snapshot(), "left")
    assert other[0] and not other[1:].any()  # only the photo known to show the right side
    assert not engine._other_side(engine._snapshot(), "right").any()
    assert engine._other_side(engine._snapshot(), "unknown") is None
    # the per-row side array kept with the rows answers as the per-query loop over photos did, after
    # an addition (its side known before it came), a side forgotten and one changed
    engine.set_sides({"grown-photo": "left", right: "unknown", engine.base_photos[2]: "front"})
    engine.add("grown-photo", "ind-2", engine._matrix[0].copy())
    engine.set_sides({engine.base_photos[3]: "right"})
    snap = engine._snapshot()
    assert len(snap.photos) == len(snap.matrix) == len(engine.base_photos) + 1
    for side in ("left", "right", "front", "back"):
        expected = [engine._sides.get(photo, side) != side for photo in snap.photos]
        assert engine._other_side(snap, side).tolist() == expected
    assert engine._other_side(snap, "back").sum() == 3  # no photo shows the back: every known side is another
    with open(second, "rb") as f:  # and an upload with a side goes through it
        _, result = engine.identify_bytes(f.read(), None, "second.jpg", "left")
    assert result.candidates[0].label == "ind-2"


def test_fused_ranking_never_rises_when_two_ps_differ_by_float_noise():
    from tfwhale.matching.rerank import fused_order
    from tfwhale.query.fused import ranking_of
    from tfwhale.retrieval.threshold import insert_new_individual

    # two P's one float step apart (the same calibrated step), the smaller with the larger cosine: the
    # cosine breaks the tie and the answered P's still never rise down the ranking
    fused = np.array([[0.255, 0.050724637681159424, 0.05072463768115942, 0.036231884057971016]])
    cosine = np.array([[0.9, 0.2, 0.8, 0.1]])
    order, answered = fused_order(fused[0], cosine[0])
    assert order.tolist() == [0, 2, 1, 3]
    assert np.all(np.diff(answered[order]) <= 0)
    ranked = ranking_of(fused, cosine, np.ones_like(fused, bool), np.array(["a", "b", "c", "d"]))
    assert ranked.labels == [["a", "c", "b", "d"]] and np.all(np.diff(ranked.scores[0]) <= 0)
    insert_new_individual(ranked.labels, ranked.scores, 0.04)  # what refused the old order
