"""examples.png: random (seeded) example queries; a missed query shows the true individual's photo."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tests.records_fixture import make_records
from tests.run_fixture import make_run
from tfwhale import predict
from tfwhale.contracts.records import load_manifest
from tfwhale.inference.examples import ExampleRow, VerifiedPhoto, pick_queries, plot_examples
from tfwhale.inference.match_pictures import COLOURS, GAP
from tfwhale.matching.pairs import PairMatch
from tfwhale.retrieval.threshold import NEW

ORDER = [f"q{i:03d}.jpg" for i in range(40)]


def test_the_same_seed_picks_the_same_queries_and_another_seed_others():
    first = pick_queries(ORDER, 8, seed=1)
    assert first == pick_queries(ORDER, 8, seed=1)
    assert len(set(first)) == 8 and set(first) <= set(ORDER)
    assert first == sorted(first, key=ORDER.index)  # shown in submission order
    assert first != pick_queries(ORDER, 8, seed=2)
    # not the old evenly spread rows (always the first and the last query)
    assert any(
        {ORDER[0], ORDER[-1]} != {picks[0], picks[-1]}
        for picks in (pick_queries(ORDER, 8, s) for s in range(5))
    )
    assert pick_queries(ORDER, 100, seed=0) == ORDER
    assert pick_queries(ORDER, 0, seed=0) == [] and pick_queries([], 5, seed=0) == []


def _tile(value: int) -> np.ndarray:
    return np.full((16, 16, 3), value, np.uint8)


def test_a_missed_query_gets_a_truth_column_and_a_hit_does_not(tmp_path):
    answers = [(f"whale_{i}", 0.9 - i / 10, _tile(40 * i)) for i in range(5)]
    hit = ExampleRow("a.jpg", _tile(0), "whale_0", answers)
    missed = ExampleRow("b.jpg", _tile(0), "whale_7", answers, truth_image=_tile(250), truth_score=0.4)
    assert missed.missed and not hit.missed
    assert not ExampleRow("c.jpg", _tile(0), None, answers).missed  # no solution: nothing to miss
    plot_examples(str(tmp_path / "hits.png"), [hit])
    plot_examples(str(tmp_path / "both.png"), [hit, missed])
    hits_width = Image.open(tmp_path / "hits.png").size[0]
    both_width = Image.open(tmp_path / "both.png").size[0]
    assert both_width == hits_width * 7 // 6  # query, truth, five answers vs query, five answers


def _predict(tmp_path, records, run_dir, seed: int, name: str) -> dict:
    solution = tmp_path / "solution.csv"
    # whale ids as truths; --threshold 1.0 puts new_individual first, so every one is a miss
    solution.write_text(
        "image,individual_id\n" + "".join(f"q{i:03d}.jpg,whale_00{i % 6}\n" for i in range(9))
    )
    out = str(tmp_path / name)
    argv = ["--runs", run_dir, "--records", records, "--out", out, "--threshold", "1.0"]
    argv += ["--examples", "4", "--examples-seed", str(seed), "--solution", str(solution)]
    assert predict.main(argv) == 0
    with open(f"{out}/submission.csv") as f:
        assert all(line.split(",")[1].startswith(NEW) for line in list(f)[1:])
    report = json.loads((tmp_path / name / "report.json").read_text())
    report["png_width"] = Image.open(f"{out}/examples.png").size[0]
    return report


def test_predict_draws_its_examples_with_the_seed_and_shows_the_truth_of_misses(tmp_path):
    records = make_records(tmp_path, n_test=9)
    run_dir = make_run(str(tmp_path / "run"), load_manifest(records))
    first = _predict(tmp_path, records, run_dir, seed=3, name="a")
    again = _predict(tmp_path, records, run_dir, seed=3, name="b")
    other = [_predict(tmp_path, records, run_dir, seed=s, name=f"c{s}") for s in (4, 5)]
    assert first["examples"]["seed"] == 3
    assert first["examples"]["verified_answers"] == 0  # --rerank none: no matches to draw
    assert first["examples"]["queries"] == again["examples"]["queries"]
    assert len(first["examples"]["queries"]) == 4
    assert any(o["examples"]["queries"] != first["examples"]["queries"] for o in other)
    assert first["examples"]["missed"] == first["examples"]["queries"]  # new_individual first everywhere
    assert first["png_width"] == 80 * 2 * 7  # the truth column is there


def test_an_answer_with_verified_matches_is_drawn_beside_the_query_with_the_match_lines(tmp_path):
    query, photo = np.full((64, 64, 3), 90, np.uint8), np.full((64, 64, 3), 160, np.uint8)
    # matches in the matching images' pixels: the query's is 64 x 64, the photo's 128 x 64 (aspect kept,
    # while its thumbnail is stretched square): (96, 10) there is (48, 10) on the thumbnail
    match = PairMatch(
        2, 5, np.array([[10, 10], [20, 40]], np.float32), np.array([[96, 10], [8, 40]], np.float32)
    )
    verified = VerifiedPhoto("g.jpg", match, (64, 64), (128, 64))
    answers = [("whale_0", 0.9, photo), ("whale_1", 0.5, photo)]
    plain = ExampleRow("a.jpg", query, "whale_0", answers)
    drawn = ExampleRow("a.jpg", query, "whale_0", answers, verified=(verified, None))
    assert plain.answer_image(0) is photo and drawn.answer_image(1) is photo  # no match: the photo alone
    picture = drawn.answer_image(0)
    assert picture.shape == (64, 64 + GAP + 64, 3)
    green = np.array(COLOURS[0])
    # the first line runs from (10, 10) on the query to (64 + GAP + 48, 10): along it, the line's colour
    assert all(np.array_equal(picture[10, x], green) for x in (10, 40, 64 + GAP // 2, 64 + GAP + 48))
    assert np.array_equal(picture[10, 64 + GAP + 50], [160, 160, 160])  # past its end, the photo
    # the second, (20, 40) to (8, 40) on the 128 px wide matching image: x = 4 on the thumbnail
    assert np.array_equal(picture[40, 20], COLOURS[1]) and np.array_equal(
        picture[40, 64 + GAP + 4], COLOURS[1]
    )
    assert np.array_equal(picture[40, 64 + GAP + 6], [160] * 3)
    # and the examples picture changes where the answer's tile is, not where the query's is
    plot_examples(str(tmp_path / "plain.png"), [plain])
    plot_examples(str(tmp_path / "drawn.png"), [drawn])
    before = np.asarray(Image.open(tmp_path / "plain.png").convert("RGB")).astype(int)
    after = np.asarray(Image.open(tmp_path / "drawn.png").convert("RGB")).astype(int)
    assert before.shape == after.shape
    changed = np.flatnonzero(np.abs(after - before).sum(axis=(0, 2)))
    tile = before.shape[1] // 3  # the query, two answers
    assert len(changed) > 10 and changed.min() >= tile and changed.max() < 2 * tile
