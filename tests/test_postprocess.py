"""DBA, query expansion and PCA whitening on small embeddings whose effect can be worked out by hand."""

import numpy as np
import pytest

from tfwhale.retrieval import knn, postprocess


def at_angles(degrees) -> np.ndarray:
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def angles_of(x: np.ndarray) -> np.ndarray:
    return np.rad2deg(np.arctan2(x[:, 1], x[:, 0]))


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_dba_shapes_norms_and_k1_identity():
    gallery = random_unit(300, 12, seed=0)
    augmented = postprocess.database_augment(gallery, k=4)
    assert augmented.shape == gallery.shape and augmented.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(augmented, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(augmented, gallery)
    # with k=1 each row is averaged with itself only
    np.testing.assert_allclose(postprocess.database_augment(gallery, k=1), gallery, atol=1e-6)


def test_dba_pulls_photos_of_one_individual_together():
    # B's photos at 10 and 25 deg, A's at -11 and -20 deg; the query is a photo of A at 0 deg.
    # Before DBA the nearest row is B's at 10 deg (A's closest is 11 deg away).
    gallery = at_angles([10, 25, -11, -20])
    labels = np.array(["B", "B", "A", "A"])
    query = at_angles([0])
    assert labels[knn.search(query, gallery, k=1)[1][0, 0]] == "B"
    # With k=2 each row is averaged with its nearest other row, which here is always the same
    # individual's other photo (15 deg and 9 deg apart, versus 21 deg across): the mean of two unit
    # vectors points at the mean angle, so B's rows move to 17.5 deg and A's to -15.5 deg.
    augmented = postprocess.database_augment(gallery, k=2)
    np.testing.assert_allclose(angles_of(augmented), [17.5, 17.5, -15.5, -15.5], atol=1e-4)
    assert labels[knn.search(query, augmented, k=1)[1][0, 0]] == "A"


def test_dba_weights_by_rank():
    gallery = at_angles([0, 30, 100])
    # row 0's neighbours are itself (0 deg) then row 1 (30 deg); weights 3:1 give
    # 3 * (1, 0) + (cos 30, sin 30), which points at atan2(0.5, 3 + 0.866) = 7.37 deg
    augmented = postprocess.database_augment(gallery, k=2, weights=[3.0, 1.0])
    assert angles_of(augmented)[0] == pytest.approx(
        np.rad2deg(np.arctan2(0.5, 3 + np.cos(np.pi / 6))), abs=1e-4
    )
    with pytest.raises(ValueError, match=r"one value per neighbour \(k=2\)"):
        postprocess.database_augment(gallery, k=2, weights=[1.0])


def test_average_query_expansion_fixes_a_near_miss():
    # A query of A at 0 deg; B's photo at 10 deg is nearest, A's photos at -11 and -20 deg follow.
    gallery = at_angles([10, -11, -20])
    labels = np.array(["B", "A", "A"])
    query = at_angles([0])
    assert labels[knn.search(query, gallery, k=1)[1][0, 0]] == "B"
    expanded = postprocess.query_expansion(query, gallery, k=3, alpha=0.0)
    # average QE: q + g1 + g2 + g3, whose angle is atan2(sum of sines, sum of cosines) = -5.25 deg,
    # now 5.75 deg from A's photo at -11 deg and 15.25 deg from B's
    degrees = np.deg2rad([0, 10, -11, -20])
    want = np.rad2deg(np.arctan2(np.sin(degrees).sum(), np.cos(degrees).sum()))
    assert angles_of(expanded)[0] == pytest.approx(want, abs=1e-4)
    assert want == pytest.approx(-5.25, abs=0.01)
    assert labels[knn.search(expanded, gallery, k=1)[1][0, 0]] == "A"


def test_query_expansion_with_one_neighbour_keeps_the_top1():
    # q' = q + w g1 with w >= 0: sim(q', g1) = s1 + w, and for any other row j
    # sim(q', gj) = sj + w <g1, gj> <= sj + w < s1 + w, so the nearest row cannot change
    gallery, queries = random_unit(500, 16, seed=1), random_unit(60, 16, seed=2)
    expanded = postprocess.query_expansion(queries, gallery, k=1, alpha=3.0)
    assert expanded.shape == queries.shape
    np.testing.assert_allclose(np.linalg.norm(expanded, axis=1), 1.0, atol=1e-6)
    before = knn.search(queries, gallery, k=1)[1]
    after = knn.search(expanded, gallery, k=1)[1]
    np.testing.assert_array_equal(after, before)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        postprocess.query_expansion(queries, gallery, alpha=-1.0)


def test_pca_whitening_decorrelates_and_renormalises():
    rng = np.random.default_rng(3)
    # anisotropic cloud: variances 9, 1, 0.25, 0.01 along mixed axes
    rotation, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    points = (rng.standard_normal((2000, 4)) * [3.0, 1.0, 0.5, 0.1]) @ rotation.T + [1.0, 2.0, 0.0, 0.0]
    gallery = postprocess.l2_normalise(points)
    whitening = postprocess.fit_pca_whitening(gallery)
    centred = (gallery - whitening.mean) @ whitening.projection
    np.testing.assert_allclose(np.cov(centred.T), np.eye(4), atol=1e-3)
    assert np.all(np.diff(whitening.eigenvalues) <= 0)
    whitened = whitening.apply(gallery)
    assert whitened.shape == (2000, 4)
    np.testing.assert_allclose(np.linalg.norm(whitened, axis=1), 1.0, atol=1e-6)
    reduced = postprocess.fit_pca_whitening(gallery, dim=2).apply(random_unit(5, 4, seed=4))
    assert reduced.shape == (5, 2)
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, atol=1e-6)


def test_pca_whitening_default_dim_and_errors():
    gallery = random_unit(3, 8, seed=5)
    assert postprocess.fit_pca_whitening(gallery).projection.shape == (8, 2)  # rank of 3 centred rows
    with pytest.raises(ValueError, match="need a"):
        postprocess.fit_pca_whitening(gallery[:1])
    with pytest.raises(ValueError, match=r"dim must be in 1\.\.8"):
        postprocess.fit_pca_whitening(gallery, dim=9)
    with pytest.raises(ValueError, match=r"expected \[n, 8\] embeddings"):
        postprocess.fit_pca_whitening(gallery).apply(random_unit(2, 4, seed=6))
