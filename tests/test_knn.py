"""kNN search and per-individual aggregation on small embeddings with known answers."""

import sys

import numpy as np
import pytest

from tfwhale.retrieval import knn


def at_angles(degrees) -> np.ndarray:
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(queries, gallery, k):
    sims = queries.astype(np.float64) @ gallery.T.astype(np.float64)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def test_exact_search_on_hand_worked_angles():
    gallery = at_angles([0, 30, 60, 90, 180])
    queries = at_angles([10, 80])
    sims, idx = knn.search(queries, gallery, k=5)
    # query at 10 deg is 10, 20, 50, 80, 170 deg from the gallery rows, in gallery order;
    # query at 80 deg is 10 deg from row 3 (90), 20 from row 2, 50 from row 1, 80 from row 0, 100 from row 4.
    np.testing.assert_array_equal(idx, [[0, 1, 2, 3, 4], [3, 2, 1, 0, 4]])
    expected = np.cos(np.deg2rad([[10, 20, 50, 80, 170], [10, 20, 50, 80, 100]]))
    np.testing.assert_allclose(sims, expected, atol=1e-6)
    assert sims.dtype == np.float32 and idx.dtype == np.int64


@pytest.mark.parametrize("backend", ["exact", "sklearn", "faiss"])
@pytest.mark.parametrize(("n_gallery", "k"), [(3000, 3), (2000, 10), (300, 50), (40, 35)])
def test_backends_match_brute_force(backend, n_gallery, k):
    if backend == "faiss":
        pytest.importorskip("faiss")
    gallery, queries = random_unit(n_gallery, 16, seed=1), random_unit(37, 16, seed=2)
    sims, idx = knn.search(queries, gallery, k=k, backend=backend)
    want_sims, want_idx = brute_force(queries, gallery, k)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)


def test_plan_keeps_the_similarity_block_within_budget():
    # Happywhale: 512 MiB / (4 B * 51,033) = 2,630 query rows, two workers of 1,315 on 2 cores
    assert knn._plan(51_033, chunk=4096, memory_budget=512 << 20, n_threads=2) == (51_033, 2630, 2)
    # 1M gallery: blocks of 65,536 rows, 2,048 queries per chunk
    assert knn._plan(1_000_000, chunk=4096, memory_budget=512 << 20, n_threads=2) == (65_536, 2048, 2)
    # a tiny budget still makes progress, one query at a time on one worker
    assert knn._plan(51_033, chunk=4096, memory_budget=1, n_threads=2) == (51_033, 1, 1)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_chunking_and_gallery_blocks_do_not_change_results(chunk, monkeypatch):
    gallery, queries = random_unit(1500, 8, seed=3), random_unit(29, 8, seed=4)
    want_sims, want_idx = knn.search(queries, gallery, k=20, chunk=4096)
    sims, idx = knn.search(queries, gallery, k=20, chunk=chunk)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(sims, want_sims, atol=1e-6)
    # a budget of one row at a time, and a gallery split into blocks merged afterwards
    monkeypatch.setattr(knn, "MAX_GALLERY_BLOCK", 400)
    sims, idx = knn.search(queries, gallery, k=20, chunk=chunk, memory_budget=1)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(sims, want_sims, atol=1e-6)


def test_parallel_workers_match_brute_force(monkeypatch):
    # pretend 3 cores: 1600-query chunks (the last one 300) split over 3 workers, 3 gallery blocks each
    monkeypatch.setattr(knn, "_n_threads", lambda: 3)
    monkeypatch.setattr(knn, "MAX_GALLERY_BLOCK", 250)
    assert knn._plan(600, chunk=1600, memory_budget=1 << 30, n_threads=3) == (250, 1600, 3)
    gallery, queries = random_unit(600, 8, seed=9), random_unit(3500, 8, seed=10)
    sims, idx = knn.search(queries, gallery, k=7, chunk=1600)
    want_sims, want_idx = brute_force(queries, gallery, 7)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)


@pytest.mark.parametrize("backend", ["exact", "sklearn"])
def test_k_larger_than_gallery_returns_whole_gallery(backend):
    gallery = at_angles([0, 90, 200])
    sims, idx = knn.search(at_angles([5]), gallery, k=10, backend=backend)
    assert sims.shape == idx.shape == (1, 3)
    np.testing.assert_array_equal(idx, [[0, 1, 2]])


@pytest.mark.parametrize("n_gallery", [6, 3000])
def test_equal_similarities_are_ordered_by_gallery_index(n_gallery):
    gallery = random_unit(n_gallery, 3, seed=5)
    query = random_unit(1, 3, seed=6)
    gallery[[4, 1, 2]] = query  # three exact copies of the query: similarity 1, tied
    _, idx = knn.search(query, gallery, k=4)
    np.testing.assert_array_equal(idx[0, :3], [1, 2, 4])


def test_sort_desc_orders_by_similarity_then_gallery_index():
    values = np.array([[0.5, -0.0, -np.inf, 0.5, 0.0, -0.25, 0.75]], np.float32)
    cols = np.array([[9, 4, 1, 2, 3, 8, 7]])
    sorted_values, sorted_cols = knn._sort_desc(values, cols)
    # 0.75; the two 0.5 by column (2 before 9); -0.0 and 0.0 are equal, so column 3 before 4; -inf last
    np.testing.assert_array_equal(sorted_cols, [[7, 2, 9, 3, 4, 8, 1]])
    np.testing.assert_array_equal(sorted_values, [[0.75, 0.5, 0.5, 0.0, 0.0, -0.25, -np.inf]])


def test_rejects_bad_embeddings():
    gallery = at_angles([0, 90])
    with pytest.raises(ValueError, match=r"gallery: row 1 has L2 norm 2"):
        knn.search(at_angles([0]), np.array([[1, 0], [0, 2]], np.float32))
    with pytest.raises(ValueError, match=r"queries: row 0 has L2 norm nan"):
        knn.search(np.array([[np.nan, 0]], np.float32), gallery)
    with pytest.raises(ValueError, match="dim 3 but gallery has dim 2"):
        knn.search(random_unit(2, 3, 0), gallery)
    with pytest.raises(ValueError, match="unknown backend"):
        knn.search(at_angles([0]), gallery, backend="annoy")


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    with pytest.raises(ImportError, match=r"pip install tfwhale\[faiss\]"):
        knn.search(at_angles([0]), at_angles([0, 90]), k=1, backend="faiss")


def test_faiss_prebuilt_ivf_index_probing_every_list_is_exact():
    pytest.importorskip("faiss")
    gallery, queries = random_unit(400, 8, seed=7), random_unit(20, 8, seed=8)
    index = knn.build_faiss_index(gallery, "IVF4,Flat", params="nprobe=4")
    sims, idx = knn.search(queries, gallery, k=5, backend="faiss", faiss_index=index)
    want_sims, want_idx = brute_force(queries, gallery, 5)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    with pytest.raises(ValueError, match="holds 400 vectors but the gallery has 399"):
        knn.search(queries, gallery[:399], k=5, backend="faiss", faiss_index=index)


def test_top_individuals_keeps_best_row_per_individual():
    labels = np.array(["A", "B", "A", "C", "B", "D"])
    sims = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    idx = np.array([[2, 1, 0, 3, 4, 5]])
    names, scores = knn.top_individuals(sims, idx, labels, n=5)
    # A's best row scores 0.9 (its 0.7 row is dropped), B's 0.8; only 4 distinct individuals exist
    assert names == [["A", "B", "C", "D"]]
    np.testing.assert_allclose(scores[0], [0.9, 0.8, 0.6, 0.4])
    names, scores = knn.top_individuals(sims, idx, labels, n=2)
    assert names == [["A", "B"]] and scores == [[0.9, 0.8]]


def test_top_individuals_sorts_unordered_neighbours_and_breaks_ties_by_index():
    labels = np.array(["A", "B", "C", "D"])
    sims = np.array([[0.2, 0.7, 0.7, 0.9, 0.7]])
    idx = np.array([[0, 3, 1, 2, 3]])
    names, scores = knn.top_individuals(sims, idx, labels, n=3)
    # C (0.9) first; B (row 1) and D (row 3) tie at 0.7, so the lower gallery row comes first
    assert names == [["C", "B", "D"]]
    np.testing.assert_allclose(scores[0], [0.9, 0.7, 0.7])


def test_top_individuals_skips_missing_neighbours_and_checks_shapes():
    labels = np.array(["A", "B"])
    names, scores = knn.top_individuals(np.array([[0.5, -np.inf]]), np.array([[1, -1]]), labels)
    assert names == [["B"]] and scores == [[0.5]]
    with pytest.raises(ValueError, match="must be matching"):
        knn.top_individuals(np.zeros((2, 3)), np.zeros((2, 2), int), labels)
    with pytest.raises(ValueError, match="gallery row 5 but there are 2 labels"):
        knn.top_individuals(np.zeros((1, 1)), np.array([[5]]), labels)


def test_search_then_top_individuals_end_to_end():
    # two photos of A near 0 deg, one of B at 40 deg, one of C at 180 deg
    gallery = at_angles([0, 5, 40, 180])
    labels = np.array(["A", "A", "B", "C"])
    sims, idx = knn.search(at_angles([30]), gallery, k=4)
    names, scores = knn.top_individuals(sims, idx, labels)
    assert names == [["B", "A", "C"]]
    np.testing.assert_allclose(scores[0], np.cos(np.deg2rad([10, 25, 150])), atol=1e-6)
