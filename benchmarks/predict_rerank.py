"""Benchmark: predict --rerank local against --rerank none on real photos, same run, same model, same queries.

    cd benchmarks
    python3 predict_rerank.py --photos ../../shared/data/nyala-dev --species nyala --seeds 0,1,2
    python3 predict_rerank.py --seeds 0,1                                   # the lions
    python3 predict_rerank.py --row lite0 --epochs 4 ...                   # a short fine-tune instead
    python3 predict_rerank.py --photos ../../shared/data/nyala-dev --species nyala --seeds 0,1,2 \\
        --oof-queries all,half                      # --rerank local calibrated on all vs half the OOF queries

Per split seed (quality_real.py's split and build: one held-out query per individual with >= 3 photos,
20% new individuals; the build takes local features, its default): one run is trained (fold 0; default
the "imagenet" row: ImageNet Lite0 with no learning, as quality_real.py's), then python -m tfwhale.predict
runs twice into fresh folders, --rerank none then --rerank local, each timed whole (embedding included).
Printed per seed and as means: test MAP@5, known MAP@5, known top-1 (first answer), new_individual
recall, predict's wall time and the ratio local / none, and report.json's OOF MAP@5 of global, local and
fused. --oof-queries runs --rerank local once per cap on the OOF queries it calibrates on
(--rerank-oof-queries: all, a count, or half of the first run's); rows "local N/M": N of M re-ranked.
Rows are cached under --work like quality_real.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import pandas as pd
from _real_split import add_task_arguments
from quality_real import DEFAULT_CONFIG, make_task, rows, run, scores

from tfwhale.core.config import load_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add_task_arguments(parser, "lion", os.path.join("/tmp", "tfwhale-predict-rerank"), species="lion")
    add("--row", default="imagenet", help="quality_real.py's row that trains the model (imagenet)")
    add("--config", default=DEFAULT_CONFIG, help=f"the recipe the Lite0 rows start from ({DEFAULT_CONFIG})")
    add("--size", type=int, default=224, help="records' image size (224)")
    add("--folds", type=int, default=5, help="folds of the build; fold 0 is trained (5)")
    add("--epochs", type=int, help="train.epochs (default: the row's)")
    add("--set", action="append", default=[], metavar="K=V", help="override for training")
    add("--new-share", type=float, default=0.2, help="share of queries of new individuals (0.2)")
    add("--seeds", default="0", help="comma list of split seeds (0)")
    add("--oof-queries", default="all", help="comma list of --rerank-oof-queries for the local runs: all, "
        "a count, or half (of the OOF queries) (all)")  # fmt: skip
    return parser.parse_args()


def train(args: argparse.Namespace, records: str) -> str:
    """The row's fold-0 run (kept: a rerun of the benchmark reuses it)."""
    row = rows(args.config)[args.row]
    runs = os.path.join(args.work, "runs", f"{args.row}-seed{args.seed}")
    if os.path.exists(os.path.join(runs, "fold0", "run.json")):
        return runs
    shutil.rmtree(runs, ignore_errors=True)
    epochs = [f"train.epochs={args.epochs}"] if args.epochs else []
    overrides = ["data.image_size=null", "train.verbose=2", *epochs, *row.overrides, *args.set]
    if row.all_epochs_frozen:
        overrides.append(f"train.frozen_epochs={load_config(row.config, overrides).train.epochs}")
    sets = [x for o in overrides for x in ("--set", o)]
    print(f"[{time.strftime('%H:%M:%S')}] seed {args.seed}: train {args.row}", flush=True)
    run([sys.executable, "-m", "tfwhale.train", "--config", row.config, "--records", records, "--out", runs,
         "--fold", "0", *sets], os.path.join(args.work, f"train-seed{args.seed}.log"))  # fmt: skip
    return runs


def predict(args, runs: str, records: str, solution: str, rerank: str, cap: str = "all") -> tuple[str, float]:
    out = os.path.join(args.work, "predict", f"{args.row}-seed{args.seed}-{rerank}-{cap}")
    shutil.rmtree(out, ignore_errors=True)  # fresh: the embedding pass is part of the time
    print(f"[{time.strftime('%H:%M:%S')}] seed {args.seed}: predict --rerank {rerank} ({cap})", flush=True)
    command = [sys.executable, "-m", "tfwhale.predict", "--runs", runs, "--records", records, "--out", out,
               "--solution", solution, "--examples", "0", "--rerank", rerank]  # fmt: skip
    if rerank == "local":
        command += ["--rerank-oof-queries", cap]
    wall, _ = run(command, os.path.join(args.work, f"predict-seed{args.seed}.log"))
    return out, wall


def score(out: str, solution: pd.DataFrame) -> dict:
    submission = pd.read_csv(os.path.join(out, "submission.csv"))
    answers = dict(zip(submission["image"], submission["predictions"].str.split(), strict=True))
    found = scores(solution["individual_id"].tolist(), [answers[n] for n in solution["image"]])
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    found["oof"] = {k: v["map5"] for k, v in report.get("rerank", {}).get("oof", {}).items()}
    found["oof_queries"] = report.get("rerank", {}).get("oof_queries")
    return found


def one_seed(args: argparse.Namespace) -> dict:
    records, solution_path, _, solution = make_task(args)
    runs = train(args, records)
    out, wall = predict(args, runs, records, solution_path, "none")
    result = {"none": {**score(out, solution), "wall": wall}}
    queries = None
    for spec in args.oof_queries.split(","):
        cap = str(max(1, queries // 2)) if spec == "half" and queries else spec  # of the first local run's
        out, wall = predict(args, runs, records, solution_path, "local", cap)
        found = {**score(out, solution), "wall": wall}
        queries = queries or (found["oof_queries"] or {}).get("of")
        result["local" if spec == "all" else f"local {spec}"] = found
    return result


def main() -> None:
    args = parse_args()
    os.makedirs(args.work, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    for seed in seeds:
        args.seed = seed
        results[seed] = one_seed(args)
        print_table(args, results)
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


def print_table(args: argparse.Namespace, results: dict) -> None:
    name = os.path.basename(os.path.normpath(args.photos))
    print(f"\n{name}, row {args.row}, {args.size} px, fold 0 of {args.folds}; load {os.getloadavg()[0]:.1f}")
    print("| seed | rerank | MAP@5 | known MAP@5 | known top-1 | new recall | predict wall s | ratio | "
          "OOF MAP@5 global / local / fused |")  # fmt: skip
    print("|---|---|--:|--:|--:|--:|--:|--:|---|")
    for seed, result in results.items():
        base = result["none"]["wall"]
        for rerank, r in result.items():
            oof = " / ".join(f"{r['oof'][k]:.3f}" for k in ("global", "local", "fused")) if r["oof"] else "-"
            sample = r.get("oof_queries")
            shown = f"{rerank} ({sample['reranked']}/{sample['of']} OOF)" if sample else rerank
            print(
                f"| {seed} | {shown} | {r['map5']:.3f} | {r['known']:.3f} | {r['top1']:.3f} | "
                f"{r['new_recall']:.2f} | {r['wall']:.0f} | {r['wall'] / base:.2f} | {oof} |"
            )
    for rerank in next(iter(results.values())):
        values = {k: [res[rerank][k] for res in results.values()] for k in ("map5", "known", "top1", "wall")}
        mean = {k: (np.mean(v), np.std(v)) for k, v in values.items()}
        print(
            f"| mean | {rerank} | {mean['map5'][0]:.3f} ± {mean['map5'][1]:.3f} | {mean['known'][0]:.3f} | "
            f"{mean['top1'][0]:.3f} ± {mean['top1'][1]:.3f} | | {mean['wall'][0]:.0f} | | |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
