"""new_individual insertion and threshold tuning, checked against hand-worked MAP@5 values."""

import numpy as np
import pytest

from tfwhale.core.metrics import map_at_k
from tfwhale.inference.threshold_plot import plot_threshold_curve
from tfwhale.retrieval import threshold as th

NEW = th.NEW
LABELS = ["a", "b", "c", "d", "e"]
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5]
GRID_TENTHS = np.round(np.arange(0.0, 1.0001, 0.1), 1)  # 0.0, 0.1, ..., 1.0 (indices 0..10)


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (0.95, [NEW, "a", "b", "c", "d"]),  # even the best score is below: new_individual first
        (0.85, ["a", NEW, "b", "c", "d"]),
        (0.75, ["a", "b", NEW, "c", "d"]),
        (0.65, ["a", "b", "c", NEW, "d"]),
        (0.55, ["a", "b", "c", "d", NEW]),
        (0.40, ["a", "b", "c", "d", "e"]),  # all five above: no room for new_individual
        (0.80, ["a", NEW, "b", "c", "d"]),  # a score equal to the threshold counts as below
    ],
)
def test_insert_new_individual_at_each_rank(threshold, expected):
    assert th.insert_new_individual([LABELS], [SCORES], threshold) == [expected]


def test_insert_new_individual_short_lists_and_max_rank():
    # fewer than 5 labels, all above: new_individual is appended
    assert th.insert_new_individual([["a", "b"]], [[0.9, 0.8]], 0.1) == [["a", "b", NEW]]
    assert th.insert_new_individual([[]], [[]], 0.5) == [[NEW]]
    # max_rank=2 is the public baseline: only the top-1 score decides between rank 1 and rank 2
    assert th.insert_new_individual([LABELS], [SCORES], 0.55, max_rank=2) == [["a", NEW, "b", "c", "d"]]
    assert th.insert_new_individual([LABELS], [SCORES], 0.40, max_rank=2) == [["a", NEW, "b", "c", "d"]]
    assert th.insert_new_individual([LABELS], [SCORES], 0.95, max_rank=2) == [[NEW, "a", "b", "c", "d"]]


def test_insert_new_individual_rejects_bad_rows():
    with pytest.raises(ValueError, match="query 1: 2 labels but 1 scores"):
        th.insert_new_individual([["a"], ["a", "b"]], [[0.5], [0.5]], 0.3)
    with pytest.raises(ValueError, match="query 0: labels already contain"):
        th.insert_new_individual([["a", NEW]], [[0.5, 0.4]], 0.3)


def test_tune_threshold_hand_worked():
    labels = [["A", "B"], ["C", "D"], ["E", "F"]]
    scores = [[0.8, 0.3], [0.5, 0.2], [0.6, 0.1]]
    truths = ["A", NEW, "E"]
    # AP per query as the threshold t moves (a score equal to t counts as below):
    #   query 1 (truth A):   t < 0.8 -> A first: 1;         t >= 0.8 -> [new, A, ..]: 1/2
    #   query 2 (truth new): t < 0.2 -> [C, D, new]: 1/3;   0.2 <= t < 0.5 -> [C, new, D]: 1/2;  t >= 0.5 -> 1
    #   query 3 (truth E):   t < 0.6 -> 1;                  t >= 0.6 -> 1/2
    # Mean: 7/9 below 0.2, 5/6 on [0.2, 0.5), 1 on [0.5, 0.6), 5/6 on [0.6, 0.8), 2/3 from 0.8.
    grid = np.round(np.arange(0.0, 1.0001, 0.025), 3)
    result = th.tune_threshold(labels, scores, truths, grid=grid)
    expected_curve = np.select(
        [grid < 0.2, grid < 0.5, grid < 0.6, grid < 0.8], [7 / 9, 5 / 6, 1.0, 5 / 6], default=2 / 3
    )
    np.testing.assert_allclose(result.map_curve, expected_curve, atol=1e-12)
    # the best run is 0.5, 0.525, 0.55, 0.575 (grid indices 20..23); its middle index (20+23)//2 = 21
    assert result.threshold == pytest.approx(0.525)
    assert result.best_map == pytest.approx(1.0)
    assert result.new_rate == pytest.approx(1 / 3)  # only query 2's top score (0.5) is <= 0.525
    assert result.n_queries == 3 and result.per_species == {} and result.per_species_map is None


def pair_of_queries(n_known: int, n_new: int):
    """Known queries: truth A, top [A, B] at [0.6, 0.2]. New queries: top [C, D] at [0.7, 0.2].

    A known query scores 1 for t < 0.6 and 1/2 above; a new one scores 1/3 for t < 0.2,
    1/2 for 0.2 <= t < 0.7 and 1 from 0.7.
    """
    labels = [["A", "B"]] * n_known + [["C", "D"]] * n_new
    scores = [[0.6, 0.2]] * n_known + [[0.7, 0.2]] * n_new
    truths = ["A"] * n_known + [NEW] * n_new
    return labels, scores, truths


@pytest.mark.parametrize(
    ("new_share", "threshold", "best_map", "new_rate"),
    [
        # 0.9 * 1 + 0.1 * 1/2 = 0.95 on [0.2, 0.6) (grid indices 2..5, middle 3) beats
        # 0.9 * 1/2 + 0.1 * 1 = 0.55 from 0.7
        (0.1, 0.3, 0.95, 0.0),
        # 0.1 * 1 + 0.9 * 1/2 = 0.55 on [0.2, 0.6) loses to 0.1 * 1/2 + 0.9 * 1 = 0.95 from 0.7
        # (indices 7..10, middle 8); both top scores 0.6 and 0.7 are then below: new_rate 1
        (0.9, 0.8, 0.95, 1.0),
        # unweighted: both runs score 0.75; the first maximum wins
        (None, 0.3, 0.75, 0.0),
    ],
)
def test_new_share_weighting_moves_the_threshold(new_share, threshold, best_map, new_rate):
    labels, scores, truths = pair_of_queries(n_known=1, n_new=1)
    result = th.tune_threshold(labels, scores, truths, grid=GRID_TENTHS, new_share=new_share)
    assert result.threshold == pytest.approx(threshold)
    assert result.best_map == pytest.approx(best_map)
    assert result.new_rate == pytest.approx(new_rate)
    assert result.new_share == new_share


def test_per_species_thresholds_with_fallback():
    known_heavy = pair_of_queries(n_known=2, n_new=1)  # species X
    new_heavy = pair_of_queries(n_known=1, n_new=2)  # species Y
    lone = pair_of_queries(n_known=1, n_new=0)  # species Z, below min_species_queries
    labels, scores, truths = (x + y + z for x, y, z in zip(known_heavy, new_heavy, lone, strict=True))
    species = ["X"] * 3 + ["Y"] * 3 + ["Z"]
    result = th.tune_threshold(
        labels, scores, truths, grid=GRID_TENTHS, species=species, per_species=True, min_species_queries=2
    )
    # X: 5/6 on [0.2, 0.6) (2 known at 1, the new one at 1/2) vs 2/3 from 0.7 -> middle of 0.2..0.5 = 0.3
    # Y: 2/3 on [0.2, 0.6) vs (1/2 + 1 + 1)/3 = 5/6 from 0.7 -> middle of 0.7..1.0 = 0.8
    # all 7 (4 known, 3 new): (4 + 1.5)/7 on [0.2, 0.6) vs (2 + 3)/7 from 0.7 -> global 0.3
    assert result.per_species == {"X": pytest.approx(0.3), "Y": pytest.approx(0.8)}
    assert result.threshold == pytest.approx(0.3)
    assert "Z" not in result.per_species  # too few queries: the global threshold
    assert result.best_map == pytest.approx(5.5 / 7)
    assert result.per_species_map == pytest.approx((2.5 + 2.5 + 1) / 7)
    with pytest.raises(ValueError, match="one species name per OOF query"):
        th.tune_threshold(labels, scores, truths, per_species=True)


@pytest.mark.parametrize("max_rank", [None, 2])
@pytest.mark.parametrize("new_share", [None, 0.2])
def test_curve_equals_map_at_k_of_inserted_predictions(max_rank, new_share):
    rng = np.random.default_rng(0)
    ids = [f"id{i}" for i in range(20)]
    labels, scores, truths = [], [], []
    for _ in range(300):
        count = int(rng.integers(0, 6))
        row = [str(x) for x in rng.choice(ids, size=count, replace=False)]
        labels.append(row)
        scores.append(sorted(np.round(rng.uniform(0, 1, count), 2).tolist(), reverse=True))
        roll = rng.random()
        truths.append(NEW if roll < 0.3 else row[0] if count and roll < 0.6 else str(rng.choice(ids)))
    grid = np.round(np.arange(0.0, 1.0001, 0.05), 2)
    result = th.tune_threshold(labels, scores, truths, grid=grid, new_share=new_share, max_rank=max_rank)
    is_new = np.array([t == NEW for t in truths])
    for t, value in zip(grid, result.map_curve, strict=True):
        predicted = th.insert_new_individual(labels, scores, t, max_rank=max_rank)
        if new_share is None:
            want = map_at_k(truths, predicted)
        else:
            groups = [np.flatnonzero(is_new == flag) for flag in (False, True)]
            known_map, new_map = (map_at_k([truths[i] for i in g], [predicted[i] for i in g]) for g in groups)
            want = (1 - new_share) * known_map + new_share * new_map
        assert value == pytest.approx(want, abs=1e-12), t
    assert result.best_map == pytest.approx(result.map_curve.max(), abs=1e-12)


def test_tune_threshold_rejects_bad_input():
    with pytest.raises(ValueError, match=r"query 0: scores must be sorted best first"):
        th.tune_threshold([["a", "b"]], [[0.2, 0.5]], ["a"])
    with pytest.raises(ValueError, match="2 truths but 1 OOF predictions"):
        th.tune_threshold([["a"]], [[0.5]], ["a", "b"])
    with pytest.raises(ValueError, match="strictly increasing"):
        th.tune_threshold([["a"]], [[0.5]], ["a"], grid=np.array([0.5, 0.1]))
    with pytest.raises(ValueError, match="new_share must be in"):
        th.tune_threshold([["a"]], [[0.5]], ["a"], new_share=1.5)


def test_plot_threshold_curve_writes_png(tmp_path):
    labels, scores, truths = pair_of_queries(n_known=1, n_new=1)
    result = th.tune_threshold(labels, scores, truths, grid=GRID_TENTHS, new_share=0.1)
    path = str(tmp_path / "threshold.png")
    plot_threshold_curve(result, path, used=0.55)
    data = (tmp_path / "threshold.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["threshold.png"]  # no temp file left behind
