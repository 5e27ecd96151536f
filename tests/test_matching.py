"""tfwhale.matching and contracts/local_features on hand-made images: features, verification, LNBNN,
aggregation, isotonic calibration and the feature-set file."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.textures import texture
from tfwhale.contracts.local_features import (
    FeatureSet,
    LocalFeatures,
    LocalFeaturesError,
    load_feature_set,
    save_feature_set,
)
from tfwhale.matching import pairs
from tfwhale.matching.aggregate import (
    RerankSettings,
    best_photos_of_each,
    per_individual,
    top_individual_photos,
    top_photos,
)
from tfwhale.matching.features import (
    ROOTSIFT_SCALE,
    SiftSettings,
    dequantise,
    extract_sift,
    quantise,
    root_sift,
)
from tfwhale.matching.fusion import ScoreCalibration, fit_calibration, fuse, leave_one_out_scores
from tfwhale.matching.lnbnn import LnbnnIndex, lnbnn_votes
from tfwhale.matching.matcher import Matcher, SiftMatcher
from tfwhale.matching.pairs import (
    PairSettings,
    match_pair,
    match_pairs,
    nearest_candidates,
    nearest_candidates_many,
    verify,
)


def rotated_scaled_crop(image: np.ndarray) -> np.ndarray:
    """The image turned 20 degrees, scaled 0.8 and cut to its middle 80 %."""
    h, w = image.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), 20, 0.8)
    warped = cv2.warpAffine(image, turn, (w, h), borderValue=(128, 128, 128))
    return np.ascontiguousarray(warped[h // 10 : h - h // 10, w // 10 : w - w // 10])


SETTINGS = SiftSettings(match_size=320, max_keypoints=400)


@pytest.fixture(scope="module")
def three() -> list[LocalFeatures]:
    original = texture(0)
    return [extract_sift(img, SETTINGS) for img in (original, rotated_scaled_crop(original), texture(1))]


def test_features_follow_the_contract(three):
    features = three[0]
    assert 50 < len(features) <= 400
    assert features.keypoints.dtype == np.float16 and features.keypoints.shape == (len(features), 4)
    assert features.descriptors.dtype == np.uint8 and features.descriptors.shape == (len(features), 128)
    assert features.image_size == (320, 320)
    assert features.nbytes == len(features) * (8 + 128)


def test_a_large_crop_is_shrunk_to_the_match_size_and_a_small_one_kept():
    big = extract_sift(np.kron(texture(2, 200), np.ones((3, 3, 1), np.uint8)), SiftSettings(match_size=300))
    assert big.image_size == (300, 300)
    assert float(big.keypoints[:, :2].max()) < 300
    small = extract_sift(texture(2, 200), SiftSettings(match_size=300))
    assert small.image_size == (200, 200)


def test_extract_refuses_what_is_not_rgb_uint8():
    with pytest.raises(ValueError, match="RGB uint8"):
        extract_sift(np.zeros((10, 10), np.uint8))


def test_blank_image_gives_empty_features_that_match_nothing():
    blank = extract_sift(np.full((64, 64, 3), 128, np.uint8))
    assert len(blank) == 0
    assert match_pair(blank, blank).inliers == 0


def test_rootsift_uint8_round_trip_keeps_unit_norm_and_the_matches():
    sift = cv2.SIFT_create(nfeatures=400)
    original = texture(0)
    grey = [cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) for img in (original, rotated_scaled_crop(original))]
    (_, a), (_, b) = (sift.detectAndCompute(g, None) for g in grey)
    exact_a, exact_b = root_sift(a), root_sift(b)
    np.testing.assert_allclose(np.linalg.norm(exact_a, axis=1), 1.0, rtol=1e-5)
    back_a = dequantise(quantise(exact_a))
    assert exact_a.max() < 255 / ROOTSIFT_SCALE  # nothing clipped
    assert np.abs(back_a - exact_a).max() <= 0.5 / ROOTSIFT_SCALE + 1e-6

    def ratio_matches(x, y):
        dots = x @ y.T
        two = np.sort(np.sqrt(np.maximum(2 - 2 * dots, 0)), axis=1)[:, :2]
        keep = two[:, 0] < 0.8 * two[:, 1]
        return {
            (int(i), int(j)) for i, j in zip(np.flatnonzero(keep), np.argmax(dots, axis=1)[keep], strict=True)
        }

    exact = ratio_matches(exact_a, exact_b)
    stored = ratio_matches(back_a, dequantise(quantise(exact_b)))
    assert len(exact) >= 40
    assert len(exact & stored) / len(exact | stored) >= 0.95


def test_a_transformed_copy_verifies_with_many_inliers_and_an_unrelated_texture_with_few(three):
    original, copy, other = three
    for geometry in ("homography", "affine", "similarity", "fundamental"):
        settings = PairSettings(geometry=geometry)
        same = match_pair(original, copy, settings)
        different = match_pair(original, other, settings)
        assert same.inliers >= 40, geometry
        assert different.inliers <= 10, geometry
        assert same.query_xy.shape == same.gallery_xy.shape == (same.inliers, 2)
    # the inliers are where the warp puts them: the crop of the 0.8x, 20-degree turn of the original
    turn = cv2.getRotationMatrix2D((160, 160), 20, 0.8)
    same = match_pair(original, copy)
    predicted = same.query_xy @ turn[:, :2].T + turn[:, 2] - 32
    assert np.median(np.linalg.norm(predicted - same.gallery_xy, axis=1)) < 2.0


def test_a_stricter_ratio_keeps_fewer_tentative_matches(three):
    candidates = nearest_candidates(three[0], three[1])
    loose, strict = candidates.passing(PairSettings(ratio=0.9)), candidates.passing(PairSettings(ratio=0.6))
    assert len(strict) < len(loose)
    assert len(candidates.passing(PairSettings(mutual=False))) >= len(candidates.passing(PairSettings()))


def brute_force_candidates(query: LocalFeatures, gallery: LocalFeatures):
    """(best, ratio, mutual) of every query keypoint, one keypoint at a time (the reference): nearest by
    the unit-norm distance sqrt(2 - 2 a.b), a.b exact in integers; mutual when no query keypoint is
    strictly nearer to its nearest gallery keypoint."""
    a, b = query.descriptors.astype(np.int64), gallery.descriptors.astype(np.int64)
    best, ratio, mutual = [], [], []
    for row in range(len(a)):
        dots = b @ a[row]
        nearest = int(np.argmax(dots))
        distance = np.sqrt(np.maximum(2 - 2 * np.sort(dots)[::-1][:2] / ROOTSIFT_SCALE**2, 0))
        best.append(nearest)
        ratio.append(distance[0] / max(distance[1], 1e-12))
        mutual.append(bool((a @ b[nearest]).max() <= dots[nearest]))
    return np.array(best), np.array(ratio), np.array(mutual)


def test_many_photos_at_once_find_what_each_pair_finds_alone(three, monkeypatch):
    query = three[0]
    one_point = LocalFeatures(three[1].keypoints[:1], three[1].descriptors[:1], (320, 320))
    blank = extract_sift(np.full((64, 64, 3), 128, np.uint8), SETTINGS)
    few = LocalFeatures(three[2].keypoints[:7], three[2].descriptors[:7], (320, 320))
    galleries = [three[1], one_point, three[2], blank, few, three[0]]
    monkeypatch.setattr(pairs, "ROWS_PER_BLOCK", 64)  # several blocks of query keypoints, the last shorter
    assert len(query) % 64
    found = nearest_candidates_many(query, galleries)
    assert len(found) == len(galleries)
    for gallery, candidates in zip(galleries, found, strict=True):
        if len(gallery) < 2:
            assert len(candidates.rows) == 0 and len(candidates.passing(PairSettings())) == 0
            continue
        best, ratio, mutual = brute_force_candidates(query, gallery)
        assert np.array_equal(candidates.rows, np.arange(len(query)))
        assert np.array_equal(candidates.best, best)
        assert np.allclose(candidates.ratio, ratio, atol=2e-3)
        assert np.array_equal(candidates.mutual, mutual)
    # the query against itself: (almost) every keypoint finds itself (uint8 norms are not exactly 1)
    itself = found[-1]
    assert np.mean(itself.best == np.arange(len(query))) > 0.95
    alone = [match_pair(query, gallery) for gallery in galleries]
    together = match_pairs(query, galleries)
    assert [m.inliers for m in together] == [m.inliers for m in alone]
    assert together[0].inliers >= 40 and together[3].inliers == 0


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_pairs_shared_out_among_threads_match_as_one_thread_does(three, monkeypatch, workers):
    """However many threads share the photos, each pair's candidates and verified matches are the same
    (and in the photos' order) as with one thread, and as the keypoint-by-keypoint reference."""
    query = three[0]
    few = LocalFeatures(three[2].keypoints[:7], three[2].descriptors[:7], (320, 320))
    galleries = [three[1], three[2], few, three[0], three[1]]
    monkeypatch.setattr(pairs.threads, "blas_threads", lambda: 1)
    alone = match_pairs(query, galleries)
    monkeypatch.setattr(pairs.threads, "blas_threads", lambda: workers)
    together = match_pairs(query, galleries)
    for one, shared in zip(alone, together, strict=True):
        assert (shared.inliers, shared.tentative) == (one.inliers, one.tentative)
        assert np.array_equal(shared.query_xy, one.query_xy) and np.array_equal(
            shared.gallery_xy, one.gallery_xy
        )
    assert together[0].inliers == together[4].inliers >= 40  # the same photo twice, in two threads' parts
    found = nearest_candidates_many(query, galleries)
    for gallery, candidates in zip(galleries, found, strict=True):
        best, _, mutual = brute_force_candidates(query, gallery)
        assert np.array_equal(candidates.best, best) and np.array_equal(candidates.mutual, mutual)


def test_in_parts_keeps_the_order_of_its_items():
    from tfwhale.matching.threads import in_parts

    seen: list[list[int]] = []

    def double(part):
        seen.append(list(part))
        return [2 * x for x in part]

    assert in_parts(double, list(range(10)), 3) == [2 * x for x in range(10)]
    assert sorted(map(len, seen)) == [3, 3, 4] and sorted(x for part in seen for x in part) == list(range(10))
    assert in_parts(double, [5], 4) == [10]  # never more parts than items
    assert in_parts(double, [], 2) == []


def test_overlapping_queries_give_blas_back_its_threads_whichever_ends_first():
    from tfwhale.matching import threads

    with threads._blas().limit(limits=2, user_api="blas"):
        if threads.blas_threads() != 2:
            pytest.skip("no BLAS threadpoolctl can set here")
        first, second = threads.one_blas_thread_each(2), threads.one_blas_thread_each(2)
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)  # the first query ends while the second still multiplies
        assert threads.blas_threads() == 1
        second.__exit__(None, None, None)
        assert threads.blas_threads() == 2


def test_sift_matcher_is_a_matcher(three):
    matcher: Matcher = SiftMatcher(SETTINGS)
    assert isinstance(matcher, SiftMatcher) and matcher.name == "sift"
    assert matcher.match(three[0], matcher.extract(rotated_scaled_crop(texture(0)))).inliers >= 40


def test_lnbnn_ranks_the_right_gallery_photo_first():
    gallery_images = [texture(seed) for seed in range(10, 16)]
    features = [extract_sift(image, SETTINGS) for image in gallery_images]
    gallery = FeatureSet.from_photos([f"g{i}" for i in range(6)], features)
    index = LnbnnIndex(gallery)
    for target in (1, 4):
        query = extract_sift(rotated_scaled_crop(gallery_images[target]), SETTINGS)
        votes = lnbnn_votes(index.neighbours(query, 4), len(gallery))
        assert int(np.argmax(votes)) == target
        left_out = np.ones(len(gallery), bool)
        left_out[target] = False  # with the right photo held out, it gets no vote
        assert lnbnn_votes(index.neighbours(query, 4), len(gallery), allowed=left_out)[target] == 0


def test_lnbnn_search_shared_out_among_threads_finds_what_one_thread_finds(monkeypatch):
    from tfwhale.matching import lnbnn

    features = [extract_sift(texture(seed), SETTINGS) for seed in range(20, 24)]
    index = LnbnnIndex(FeatureSet.from_photos([f"g{i}" for i in range(4)], features))
    query = extract_sift(rotated_scaled_crop(texture(21)), SETTINGS)
    monkeypatch.setattr(lnbnn.threads, "opencv_threads", lambda: 1)
    alone = index.neighbours(query, 5)
    monkeypatch.setattr(lnbnn.threads, "opencv_threads", lambda: 3)
    monkeypatch.setattr(lnbnn, "SEARCH_ROWS_PER_THREAD", 10)
    shared = index.neighbours(query, 5)
    assert alone.photo.shape == (len(query), 5) and len(query) > 30
    assert np.array_equal(shared.photo, alone.photo) and np.array_equal(shared.distance, alone.distance)
    assert int(np.argmax(lnbnn_votes(shared, 4))) == 1


def test_lnbnn_votes_are_margins_over_the_normaliser():
    from tfwhale.matching.lnbnn import Neighbours

    found = Neighbours(np.array([[2, 2, 0, 1]]), np.array([[1.0, 1.5, 3.0, 4.0]], np.float32))
    # k=1: the normaliser is the second neighbour, whatever its photo (1.5): photo 2 gets 1.5 - 1.0
    np.testing.assert_allclose(lnbnn_votes(found, 3, k=1), [0.0, 0.0, 0.5])
    # k=2: normaliser 3.0; photo 2 votes once, with its nearest neighbour (3.0 - 1.0)
    np.testing.assert_allclose(lnbnn_votes(found, 3, k=2), [0.0, 0.0, 2.0])
    allowed = np.array([True, True, False])
    np.testing.assert_allclose(lnbnn_votes(found, 3, k=1, allowed=allowed), [1.0, 0.0, 0.0])


def test_per_individual_max_and_sum_and_shortlists():
    photo_scores = np.array([[5.0, 1.0, 3.0, 0.0]])
    owner = np.array([0, 0, 2, 2])
    np.testing.assert_array_equal(per_individual(photo_scores, owner, 3, "max"), [[5.0, 0.0, 3.0]])
    np.testing.assert_array_equal(per_individual(photo_scores, owner, 3, "sum"), [[6.0, 0.0, 3.0]])
    np.testing.assert_array_equal(top_individual_photos(np.array([0.1, 0.9, 0.5]), owner, 1), [0, 0, 0, 0])
    np.testing.assert_array_equal(top_individual_photos(np.array([0.1, 0.2, 0.5]), owner, 1), [0, 0, 1, 1])
    np.testing.assert_array_equal(top_photos(photo_scores[0], 2), [1, 0, 1, 0])
    with pytest.raises(ValueError, match="aggregation"):
        per_individual(photo_scores, owner, 3, "mean")
    np.testing.assert_array_equal(best_photos_of_each(np.array([1.0, 4.0, 2.0, 3.0]), owner, 1), [0, 1, 0, 1])
    np.testing.assert_array_equal(best_photos_of_each(np.array([1.0, 4.0, 2.0, 3.0]), owner, 2), [1, 1, 1, 1])
    with pytest.raises(ValueError, match="aggregation"):
        RerankSettings(aggregation="mean")
    with pytest.raises(ValueError, match="shortlist_k"):
        RerankSettings(shortlist_k=0)


def test_isotonic_calibration_is_monotone_and_saves():
    rng = np.random.default_rng(0)
    same = rng.random(400) < 0.3
    scores = np.where(same, rng.normal(30, 10, 400), rng.normal(8, 4, 400))
    calibration = fit_calibration(scores, same)
    grid = np.linspace(-10, 80, 200)
    probability = calibration(grid)
    assert np.all(np.diff(probability) >= 0) and probability.min() >= 0 and probability.max() <= 1
    assert probability[0] < 0.1 and probability[-1] > 0.9
    assert ScoreCalibration.from_dict(calibration.to_dict()) == calibration
    with pytest.raises(ValueError, match="both"):
        fit_calibration(scores, np.zeros(400, bool))
    np.testing.assert_allclose(fuse(np.array([0.2, 1.0]), np.array([0.6, 0.0])), [0.4, 0.5])


def test_leave_one_out_scores_never_use_the_self_pair():
    owner = np.array([0, 0, 1, 2])
    matrix = np.array([[99, 7, 1, 2], [7, 99, 3, 0], [1, 3, 99, 8], [2, 0, 8, 99]], float)
    scores, scored = leave_one_out_scores(matrix, owner, 3)
    np.testing.assert_array_equal(scores, [[7, 1, 2], [7, 3, 0], [3, 0, 8], [2, 8, 0]])
    # photo 2 is individual 1's only photo: as a query its own individual has nothing left to match
    np.testing.assert_array_equal(scored, [[1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 1, 0]])
    calibration = fit_calibration(scores[scored], (np.arange(3)[None, :] == owner[:, None])[scored])
    assert calibration(np.array([99.0]))[0] == pytest.approx(0.5)  # the best scores: 2 same, 2 not
    with_self = fit_calibration(np.r_[scores[scored], np.diag(matrix)], np.r_[(np.arange(3)[None, :] ==
                                owner[:, None])[scored], np.ones(4, bool)])  # fmt: skip
    assert with_self(np.array([99.0]))[0] == 1.0  # what self-pairs would have taught it


def test_feature_set_round_trip_and_corruption(tmp_path, three):
    features = FeatureSet.from_photos(["a.jpg", "b.jpg", "c.jpg"], list(three))
    path = str(tmp_path / "local.npz")
    digest = save_feature_set(path, features)
    loaded = load_feature_set(path, sha256=digest)
    assert loaded.names == ("a.jpg", "b.jpg", "c.jpg")
    for i in range(3):
        np.testing.assert_array_equal(loaded[i].descriptors, three[i].descriptors)
        np.testing.assert_array_equal(loaded[i].keypoints, three[i].keypoints)
        assert loaded[i].image_size == three[i].image_size
    np.testing.assert_array_equal(loaded.photo_of_row[loaded.offsets[1] - 1 : loaded.offsets[1] + 1], [0, 1])
    with pytest.raises(LocalFeaturesError, match="sha256"):
        load_feature_set(path, sha256="0" * 64)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(LocalFeaturesError, match=r"bad\.npz"):
        load_feature_set(str(tmp_path / "bad.npz"))


def test_local_features_refuse_wrong_dtypes():
    with pytest.raises(LocalFeaturesError, match="float16"):
        LocalFeatures(np.zeros((2, 4), np.float32), np.zeros((2, 128), np.uint8), (10, 10))
    with pytest.raises(LocalFeaturesError, match="descriptors"):
        LocalFeatures(np.zeros((2, 4), np.float16), np.zeros((3, 128), np.uint8), (10, 10))


def test_degenerate_matches_verify_to_no_inliers_without_an_error():
    on_a_line = np.stack([np.arange(12.0), 2 * np.arange(12.0)], axis=1).astype(np.float32)
    one_point = np.repeat(on_a_line[:1], 12, axis=0)
    for geometry in ("homography", "affine", "fundamental"):
        assert not verify(on_a_line, 1.5 * on_a_line, PairSettings(geometry=geometry)).any(), geometry
    for geometry in ("homography", "affine", "similarity", "fundamental"):
        assert not verify(one_point, one_point, PairSettings(geometry=geometry)).any(), geometry
    assert not verify(on_a_line[:3], on_a_line[:3], PairSettings(geometry="homography")).any()  # < 4
