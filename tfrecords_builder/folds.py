"""build-tfrecords fold split: spread every individual's photos evenly over the folds, singletons included."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tfrecords_builder.errors import BuildInputError


def assign_folds(
    individual_ids: Sequence[str],
    n_folds: int = 5,
    seed: int = 0,
    image_names: Sequence[str] | None = None,
) -> np.ndarray:
    """A fold in [0, n_folds) for each row.

    Each individual's photos go to the folds as evenly as possible (per-fold counts differ by at most 1, so
    two photos land in two folds), and the leftover photos go to the currently smallest folds, so overall
    fold sizes stay close. Individuals are visited largest first (ties in seeded random order) and singletons,
    which come last, fill the gaps. (A plain StratifiedKFold refuses the many one-photo individuals.)

    The result depends only on (ids, n_folds, seed). With `image_names` it is also independent of row order:
    photos of one individual are dealt in name order instead of row order.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    ids = np.asarray([str(value) for value in individual_ids], dtype=object)
    folds = np.full(len(ids), -1, dtype=np.int64)
    if not len(ids):
        return folds
    uniques, inverse, counts = np.unique(ids.astype(str), return_inverse=True, return_counts=True)
    rows_by_individual = np.split(_grouped_rows(inverse, image_names), np.cumsum(counts)[:-1])
    rng = np.random.default_rng(seed)
    visit = rng.permutation(len(uniques))
    visit = visit[np.argsort(-counts[visit], kind="stable")]
    sizes = np.zeros(n_folds, dtype=np.int64)
    for individual in visit:
        rows = rows_by_individual[individual]
        targets = _deal(len(rows), sizes, rng)
        folds[rows] = targets[rng.permutation(len(rows))]
        sizes += np.bincount(targets, minlength=n_folds)
    return folds


def _grouped_rows(inverse: np.ndarray, image_names: Sequence[str] | None) -> np.ndarray:
    """Row indices grouped by individual (in sorted-id order); within a group by name, else by row."""
    if image_names is None:
        return np.argsort(inverse, kind="stable")
    names = np.asarray([str(name) for name in image_names])
    if len(names) != len(inverse):
        raise ValueError(f"image_names has {len(names)} entries for {len(inverse)} individual ids")
    return np.lexsort((names, inverse))


def _deal(n_photos: int, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Folds for n photos: every fold n // k times, and the n % k leftovers to the smallest folds."""
    n_folds = len(sizes)
    rounds, leftover = divmod(n_photos, n_folds)
    smallest_first = np.lexsort((rng.random(n_folds), sizes))
    return np.concatenate([np.tile(np.arange(n_folds), rounds), smallest_first[:leftover]])


def check_fold_count(n_photos: int, n_folds: int) -> None:
    """Every fold needs a photo: an empty fold would validate on nothing and shift the fold names."""
    if n_photos < n_folds:
        raise BuildInputError(
            f"--folds {n_folds}: only {n_photos} usable training photo(s), so some folds would be empty; "
            f"use --folds {max(n_photos, 2)} or fewer"
        )
