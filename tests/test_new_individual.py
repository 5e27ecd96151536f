"""new_individual when every individual has several photos: simulation, calibration, warnings, end to end."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from tfrecords_builder import cli as build_cli
from tfwhale import predict, train
from tfwhale.core.labels import NEW_INDIVIDUAL as NEW
from tfwhale.core.metrics import map_at_k
from tfwhale.nets import pretrained_lite
from tfwhale.retrieval import threshold as th
from tfwhale.retrieval.calibration import quantile_map
from tfwhale.retrieval.ranking import PreparedGallery, Ranked, RankOptions, rank
from tfwhale.retrieval.scoring import choose_simulated, rank_out_of_fold, simulate_new
from tfwhale.synthetic import dataset as synthetic

SHARED, OWN = 0.5, 0.1  # cosine between two photos: SHARED for any two, SHARED + OWN for one individual


def catalogue(
    n_individuals: int, photos: int, first: int = 0, dim: int = 512
) -> tuple[np.ndarray, list[str]]:
    """Unit embeddings with known similarities: a common part, one direction per individual, one per photo."""
    rows, ids = [], []
    for i in range(first, first + n_individuals):
        for j in range(photos):
            e = np.zeros(dim)
            e[0] = np.sqrt(SHARED)
            e[1 + i] = np.sqrt(OWN)
            e[200 + i * photos + j] = np.sqrt(1 - SHARED - OWN)
            rows.append(e)
            ids.append(f"id{i:03d}")
    return np.asarray(rows, np.float32), ids


def out_of_fold(n_individuals=40, photos=3, n_folds=3):
    """Every individual has one photo in each fold: out of fold, every query is known."""
    emb, ids = catalogue(n_individuals, photos)
    folds = np.arange(len(ids)) % photos % n_folds
    labels, scores, truths = [], [], []
    for k in range(n_folds):
        q = folds == k
        ranked, fold_truths = rank_out_of_fold(
            emb[q],
            [i for i, f in zip(ids, q, strict=True) if f],
            emb[~q],
            [i for i, f in zip(ids, q, strict=True) if not f],
        )
        labels += ranked.labels
        scores += ranked.scores
        truths += fold_truths
    return labels, scores, truths


def test_stratified_oof_has_no_new_queries_and_the_old_tuning_never_says_new():
    labels, scores, truths = out_of_fold()
    assert NEW not in truths
    old = th.tune_threshold([row[:5] for row in labels], [row[:5] for row in scores], truths)
    # Any threshold below the known similarity is "best": the middle of that run sits far below the new
    # queries' top-1 (SHARED), so a really new individual is never answered new_individual first.
    assert old.threshold < SHARED
    assert old.warnings and "only 0 new OOF queries" in old.warnings[0]


def test_simulated_new_individuals_put_the_threshold_between_known_and_new():
    labels, scores, truths = out_of_fold()
    scored = simulate_new(Ranked(labels, scores), truths, new_share=0.2, seed=1)
    assert scored.truths.count(NEW) == round(0.2 * len(truths))
    tuned = th.tune_threshold(scored.ranked.labels, scored.ranked.scores, scored.truths, n_simulated=24)
    # Known queries score SHARED + OWN, new ones SHARED: the right thresholds are [SHARED, SHARED + OWN).
    step = th.DEFAULT_GRID[1] - th.DEFAULT_GRID[0]
    assert SHARED - step <= tuned.threshold < SHARED + OWN
    assert tuned.best_map == pytest.approx(1.0)
    assert tuned.separation_auc == pytest.approx(1.0) and not tuned.warnings
    # Test photos of individuals absent from the catalogue now get new_individual first.
    gallery, gallery_ids = catalogue(40, 3)
    new_photos, _ = catalogue(5, 2, first=100)
    ranked = rank(new_photos, PreparedGallery(gallery, None), gallery_ids, RankOptions())
    answers = th.insert_new_individual(ranked.labels, ranked.scores, tuned.threshold)
    assert all(answer[0] == NEW for answer in answers)


def test_simulated_queries_lose_their_own_individual_and_keep_five_candidates():
    labels, scores, truths = out_of_fold(n_individuals=10)
    scored = simulate_new(Ranked(labels, scores), truths, new_share=0.3, seed=0)
    for row, truth in enumerate(truths):
        assert len(scored.ranked.labels[row]) == 5
        if scored.simulated[row]:
            assert scored.truths[row] == NEW and truth not in scored.ranked.labels[row]
        else:
            assert scored.truths[row] == truth and scored.ranked.labels[row] == labels[row][:5]


def test_choose_simulated_is_seeded_counts_real_new_ones_and_keeps_a_known_individual():
    truths = [f"a{i // 2}" for i in range(20)] + [NEW] * 2  # 10 individuals x 2 queries, 2 really new
    first = choose_simulated(truths, 0.5, seed=7)
    assert first == choose_simulated(truths, 0.5, seed=7) != choose_simulated(truths, 0.5, seed=8)
    assert len(first) == 5  # 11 of 22 new: 2 real + 5 individuals x 2 queries (the last one tips it over)
    assert choose_simulated(truths, 0.05, seed=0) == set()  # the real new ones already make 5%
    assert len(choose_simulated(truths, 0.99, seed=0)) == 9  # never all of them
    with pytest.raises(ValueError, match="new_share"):
        choose_simulated(truths, 1.0)


def test_separation_auc_hand_worked():
    top1 = np.array([0.9, 0.5, 0.6, 0.4])
    is_new = np.array([False, False, True, True])
    # known > new in 3 of the 4 pairs
    assert th.separation_auc(top1, is_new) == pytest.approx(0.75)
    assert th.separation_auc(np.array([0.5, 0.5]), np.array([False, True])) == pytest.approx(0.5)
    assert th.separation_auc(np.array([0.5]), np.array([False])) is None


def test_warnings_name_too_few_queries_and_poor_separation():
    rng = np.random.default_rng(0)
    top1 = rng.random(200)
    is_new = np.zeros(200, dtype=bool)
    is_new[:50] = True  # same distribution for both kinds: AUC about 0.5
    warnings = th.reliability_warnings(top1, is_new)
    assert len(warnings) == 1 and "barely separate" in warnings[0]
    few = th.reliability_warnings(
        np.r_[np.full(100, 0.9), np.full(5, 0.1)], np.r_[np.zeros(100), np.ones(5)] > 0
    )
    assert len(few) == 1 and "only 5 new OOF queries" in few[0]


def test_threshold_one_puts_new_individual_first_even_above_one():
    answers = th.insert_new_individual([["a", "b"]], [[1.0000001, 0.3]], 1.0)
    assert answers[0][0] == NEW
    tuned = th.tune_threshold([["a"]], [[1.0000001]], [NEW], grid=np.array([0.5, 1.0]))
    assert tuned.new_rate == 1.0


def test_quantile_map_hand_worked():
    single = np.array([0.1, 0.2, 0.3, 0.4])
    averaged = np.array([0.8, 0.5, 0.7, 0.6])
    # half the queries fall at or below 0.25 on one model's scale -> between the 2nd and 3rd averaged
    assert quantile_map(0.25, single, averaged) == pytest.approx(0.65)
    assert quantile_map(0.05, single, averaged) < 0.5  # none new
    assert quantile_map(0.45, single, averaged) >= 0.8  # all new
    assert quantile_map(0.3, np.zeros(0), averaged) == 0.3


def test_readme_recipe_beats_the_new_individual_first_floor(tmp_path):
    """End to end on a curated synthetic catalogue (every animal 5+ photos, ~20% of test photos new):
    lite0_224 (ImageNet Lite0, briefly fine-tuned at 64 px) with the auto threshold scores above
    answering new_individual first (then the most frequent individuals)."""
    try:
        pretrained_lite.find_pth(0)
    except pretrained_lite.LiteWeightsError as err:
        pytest.skip(f"the tfwhale[lite] extra is not installed: {err}")
    data, rec, run, out = (str(tmp_path / name) for name in ("data", "records", "run", "predict"))
    synthetic.generate(data, individuals=60, min_photos=5, singletons=False, new_fraction=0.05,
                       image_size=160, seed=4, progress=False)  # fmt: skip
    boxes = os.path.join(data, "boxes.csv")
    assert build_cli.main(["--data", data, "--out", rec, "--size", "64", "--boxes", boxes, "-q"]) == 0
    brief = ["data.image_size=null", "train.epochs=4", "train.val_every=4"]
    sets = [part for override in brief for part in ("--set", override)]
    assert train.main(["--config", "lite0_224", "--records", rec, "--out", run, "--fold", "0", *sets]) == 0
    solution = os.path.join(data, "test_solution.csv")
    assert predict.main(["--runs", run, "--records", rec, "--out", out, "--solution", solution,
                         "--examples", "0"]) == 0  # fmt: skip
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    truths = pd.read_csv(solution)["individual_id"].tolist()
    assert 0.15 < truths.count(NEW) / len(truths) < 0.4
    frequent = [
        name
        for name, _ in Counter(pd.read_csv(os.path.join(data, "train.csv"))["individual_id"]).most_common(4)
    ]
    floor = map_at_k(truths, [[NEW, *frequent]] * len(truths))
    assert report["test"]["map5"] > floor + 0.03, (report["test"], floor, report["threshold"])
    assert report["test"]["map5_known"] > 0.1, report["test"]
