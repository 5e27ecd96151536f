"""MAP@5 against values worked by hand."""

import pytest

from tfwhale.core.metrics import average_precision_at_k, map_at_k


@pytest.mark.parametrize(
    ("predicted", "expected"),
    [
        (["a", "x", "y", "z", "w"], 1.0),  # rank 1 -> 1/1
        (["x", "a", "y", "z", "w"], 0.5),  # rank 2 -> 1/2
        (["x", "y", "a", "z", "w"], 1 / 3),  # rank 3
        (["x", "y", "z", "a", "w"], 0.25),  # rank 4
        (["x", "y", "z", "w", "a"], 0.2),  # rank 5
        (["x", "y", "z", "w", "v"], 0.0),  # absent
        (["x", "y", "z", "w", "v", "a"], 0.0),  # 6th place is past k=5
        (["x", "x", "x", "a"], 0.5),  # duplicates count once: distinct list is x, a
        (["x", "a"], 0.5),  # fewer than 5 predictions
        ([], 0.0),
    ],
)
def test_average_precision_by_hand(predicted, expected):
    assert average_precision_at_k("a", predicted) == pytest.approx(expected)


def test_new_individual_is_a_label_like_any_other():
    assert average_precision_at_k("new_individual", ["id1", "new_individual", "id2"]) == 0.5
    assert average_precision_at_k("id1", ["new_individual", "id1"]) == 0.5


def test_map_is_mean_over_queries():
    truths = ["a", "b", "c", "d"]
    predictions = [["a"], ["x", "b"], ["x", "y", "z", "w", "c"], ["q"]]
    # (1 + 1/2 + 1/5 + 0) / 4 = 1.7 / 4 = 0.425
    assert map_at_k(truths, predictions) == pytest.approx(0.425)


def test_map_checks_lengths():
    with pytest.raises(ValueError, match="2 truths but 1 predictions"):
        map_at_k(["a", "b"], [["a"]])
