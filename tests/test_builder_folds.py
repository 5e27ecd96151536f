"""Fold split: every individual spread evenly over the folds, singletons included, sizes balanced."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tfrecords_builder.folds import assign_folds


def whale_like_ids(seed: int = 1) -> list[str]:
    """A long-tailed id list like Happywhale's: many singletons and pairs, a few large individuals."""
    rng = np.random.default_rng(seed)
    counts = [1] * 300 + [2] * 100 + [3] * 30 + list(rng.integers(4, 40, size=40))
    ids = [f"id{index:04d}" for index, count in enumerate(counts) for _ in range(count)]
    return list(rng.permutation(ids))


def per_individual_fold_counts(ids: list[str], folds: np.ndarray, n_folds: int) -> dict[str, np.ndarray]:
    counts: dict[str, np.ndarray] = {}
    for individual, fold in zip(ids, folds, strict=True):
        counts.setdefault(individual, np.zeros(n_folds, dtype=int))[fold] += 1
    return counts


@pytest.mark.parametrize("n_folds", [2, 3, 5])
def test_every_individual_is_spread_evenly(n_folds):
    ids = whale_like_ids()
    folds = assign_folds(ids, n_folds=n_folds, seed=0)
    assert folds.shape == (len(ids),) and folds.dtype == np.int64
    assert set(folds.tolist()) == set(range(n_folds))
    for individual, counts in per_individual_fold_counts(ids, folds, n_folds).items():
        assert counts.max() - counts.min() <= 1, individual
        assert np.count_nonzero(counts) == min(counts.sum(), n_folds), individual


def test_large_individual_is_in_every_fold():
    folds = assign_folds(["big"] * 12 + ["pair"] * 2 + ["one"], n_folds=5)
    assert sorted(np.bincount(folds[:12], minlength=5).tolist()) == [2, 2, 2, 3, 3]
    assert folds[12] != folds[13]


def test_fold_sizes_are_balanced_with_singletons():
    ids = whale_like_ids()
    sizes = np.bincount(assign_folds(ids, n_folds=5, seed=3), minlength=5)
    assert sizes.max() - sizes.min() <= 1
    singletons = [individual for individual, count in Counter(ids).items() if count == 1]
    only_singletons = assign_folds(singletons, n_folds=5, seed=3)
    assert np.bincount(only_singletons).tolist() == [60] * 5


def test_deterministic_and_seeded():
    ids = whale_like_ids()
    first = assign_folds(ids, n_folds=5, seed=7)
    assert np.array_equal(first, assign_folds(ids, n_folds=5, seed=7))
    assert not np.array_equal(first, assign_folds(ids, n_folds=5, seed=8))


def test_independent_of_row_order_given_image_names():
    ids = whale_like_ids()
    names = [f"img{index:05d}.jpg" for index in range(len(ids))]
    folds = assign_folds(ids, seed=0, image_names=names)
    order = np.random.default_rng(5).permutation(len(ids))
    shuffled = assign_folds([ids[i] for i in order], seed=0, image_names=[names[i] for i in order])
    assert dict(zip(names, folds.tolist(), strict=True)) == {
        names[i]: fold for i, fold in zip(order, shuffled.tolist(), strict=True)
    }


def test_per_individual_counts_do_not_depend_on_row_order():
    ids = whale_like_ids()
    folds = assign_folds(ids, seed=0)
    reversed_folds = assign_folds(ids[::-1], seed=0)[::-1]
    forward = per_individual_fold_counts(ids, folds, 5)
    backward = per_individual_fold_counts(ids, reversed_folds, 5)
    assert forward.keys() == backward.keys()
    for individual, counts in forward.items():
        assert np.array_equal(counts, backward[individual]), individual


def test_edge_cases():
    assert assign_folds([], n_folds=5).shape == (0,)
    assert assign_folds(["a"], n_folds=5).tolist()[0] in range(5)
    with pytest.raises(ValueError, match="n_folds must be at least 2"):
        assign_folds(["a", "b"], n_folds=1)
    with pytest.raises(ValueError, match="image_names has 1 entries for 2"):
        assign_folds(["a", "b"], image_names=["x.jpg"])
