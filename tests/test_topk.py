"""Row-wise top-k kernel of the exact kNN search, against a full sort, ties and degenerate rows included."""

import numpy as np
import pytest

from tfwhale.retrieval import topk


def by_full_sort(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest first, equal values by lower column: what top_k_rows must return."""
    columns = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
    order = np.lexsort((columns, -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def test_hand_worked_row_with_ties():
    row = np.array([[0.5, -0.0, 0.25, 0.5, 0.0, 0.75, 0.25]], np.float32)
    values, columns = topk.top_k_rows(row, 5)
    # 0.75 (col 5); the two 0.5 by column (0, 3); the two 0.25 (2, 6); 0.0 and -0.0 left out
    np.testing.assert_array_equal(columns, [[5, 0, 3, 2, 6]])
    np.testing.assert_array_equal(values, [[0.75, 0.5, 0.5, 0.25, 0.25]])
    # a tie straddling the k-th place keeps the lower column
    np.testing.assert_array_equal(topk.top_k_rows(row, 2)[1], [[5, 0]])
    # -0.0 and 0.0 are equal: column 1 before column 4
    np.testing.assert_array_equal(topk.top_k_rows(row, 7)[1], [[5, 0, 3, 2, 6, 1, 4]])


@pytest.mark.parametrize(
    ("n_cols", "k"),
    [
        (7, 3),  # fewer columns than one block: every entry is a candidate
        (33, 33),  # k = all columns
        (1000, 50),  # fewer blocks (31) than k: no floor
        (5000, 5),  # 156 blocks: floor by bisection, a tail of 8 columns
        (20_000, 50),  # 625 blocks, k = 50 as predict uses it
    ],
)
@pytest.mark.parametrize("values", ["continuous", "few levels", "constant"])
def test_matches_a_full_sort(n_cols, k, values):
    rng = np.random.default_rng(n_cols + k)
    sims = rng.standard_normal((40, n_cols)).astype(np.float32)
    if values == "few levels":  # many exact ties, also among the block maxima
        sims = np.round(sims * 2).astype(np.float32)
    elif values == "constant":  # every block maximum equal: the floor is the top value itself
        sims[:] = 0.125
    sims[::7] *= 3  # rows with other spreads than their neighbours: the carried-over floor fails
    got_values, got_columns = topk.top_k_rows(np.ascontiguousarray(sims), k)
    want_values, want_columns = by_full_sort(sims, k)
    np.testing.assert_array_equal(got_columns, want_columns)
    np.testing.assert_array_equal(got_values, want_values)


def test_sorted_rows_put_the_best_in_the_last_blocks():
    # ascending rows: the insertion sort sees the k best last, each beating everything before it
    sims = np.tile(np.linspace(-1, 1, 4000, dtype=np.float32), (3, 1))
    values, columns = topk.top_k_rows(sims, 50)
    np.testing.assert_array_equal(columns, np.tile(np.arange(3999, 3949, -1), (3, 1)))
    np.testing.assert_array_equal(values, sims[:, 3999:3949:-1])


def test_rejects_what_the_kernel_cannot_take():
    sims = np.zeros((2, 10), np.float32)
    with pytest.raises(ValueError, match=r"k must be in \[1, 10\], got 11"):
        topk.top_k_rows(sims, 11)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        topk.top_k_rows(sims.astype(np.float64), 3)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        topk.top_k_rows(np.zeros((10, 2), np.float32).T, 3)


def test_kernels_compile_without_a_writable_cache_folder(monkeypatch):
    def njit_refusing_cache(**options):
        if options.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return lambda function: ("compiled", function, options)

    monkeypatch.setattr(topk.numba, "njit", njit_refusing_cache)
    compiled = topk._jit(fastmath=True)(by_full_sort)
    assert compiled == ("compiled", by_full_sort, {"nogil": True, "fastmath": True})
