"""Benchmark of the new_individual threshold on a catalogue where every individual has 3+ photos (quality).

The README's path for your own photos (lite0_224: ImageNet EfficientNet-Lite0 fine-tuned; 5 folds;
predict --threshold auto) on synthetic whales built like a real photo-ID set: every animal has at
least 3 photos (`--no-singletons`), and about 20% of the test photos show animals never seen.
Then, from the same cached embeddings, predict with:
  before        --new-share 0    (tuning on the real OOF queries only: the old method)
  default       the README path  (simulated new individuals, the OOF-tuned threshold used as is)
  calibrated    --calibrate      (the same, carried onto the fold-averaged test scale by quantile mapping)
  threshold 1.0 --threshold 1.0  (new_individual first everywhere, candidates after it)
and the floors computed on the solution: new_individual first (then the most frequent individuals), and
the most frequent individuals alone. Prints one table of test MAP@5 (known / new) and new-first rates.

    python3 dev.py bench new_individual                       # ~20-30 min on 2 cores
    python3 dev.py bench new_individual --config tiny_cpu --epochs 60   # the from-scratch model
    python3 dev.py bench new_individual --individuals 80 --epochs 6     # quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter

import pandas as pd

from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.core.metrics import map_at_k

VARIANTS = {
    "before (real OOF new only)": ["--new-share", "0"],
    "default (simulated new individuals)": [],
    "simulated new + calibration (--calibrate)": ["--calibrate"],
    "threshold 1.0": ["--threshold", "1.0"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--individuals", type=int, default=180, help="animals, new ones included (180)")
    add("--new-fraction", type=float, default=0.05, help="share of animals seen only in test (0.05)")
    add("--epochs", type=int, help="epochs per fold (default: the config's)")
    add("--size", type=int, default=96, help="record image size (96: the synthetic whales' marks show)")
    add("--min-photos", type=int, default=3, help="photos per animal, at least (3, no singletons)")
    add("--config", default="lite0_224", help="training recipe (lite0_224, the README's for your own "
        "photos; tiny_cpu learns too little here to tell known from new)")  # fmt: skip
    add("--seed", type=int, default=0)
    add("--work", help="working folder (default: a temporary one); reruns reuse what is finished")
    return parser.parse_args()


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def make_records(args: argparse.Namespace, work: str) -> tuple[str, str]:
    # named by what shapes them, so a rerun with other options under one --work never reuses them
    name = f"{args.individuals}x{args.min_photos}-new{args.new_fraction}-seed{args.seed}"
    data, records = os.path.join(work, f"data-{name}"), os.path.join(work, f"records-{name}-{args.size}px")
    if not os.path.exists(os.path.join(data, "test_solution.csv")):
        run([sys.executable, "-m", "tfwhale.synthetic", data, "--individuals", str(args.individuals),
             "--min-photos", str(args.min_photos), "--no-singletons", "--new-fraction",
             str(args.new_fraction), "--seed", str(args.seed), "--no-progress"])  # fmt: skip
    if not os.path.exists(os.path.join(records, "manifest.json")):
        run([sys.executable, "-m", "tfrecords_builder", "--data", data, "--out", records, "--size",
             str(args.size), "--boxes", os.path.join(data, "boxes.csv"), "-q"])  # fmt: skip
    return data, records


def floors(solution: pd.DataFrame, train: pd.DataFrame) -> dict[str, list[list[str]]]:
    frequent = [name for name, _ in Counter(train["individual_id"]).most_common(5)]
    return {
        "floor: new_individual first": [[NEW_INDIVIDUAL, *frequent[:4]]] * len(solution),
        "floor: most frequent": [frequent] * len(solution),
    }


def scores(truths: list[str], answers: list[list[str]]) -> dict[str, float]:
    known = [i for i, t in enumerate(truths) if t != NEW_INDIVIDUAL]
    new = [i for i, t in enumerate(truths) if t == NEW_INDIVIDUAL]

    def subset(rows):
        return map_at_k([truths[i] for i in rows], [answers[i] for i in rows]) if rows else float("nan")

    return {
        "map5": map_at_k(truths, answers),
        "known": subset(known),
        "new": subset(new),
        "new_first": sum(a[0] == NEW_INDIVIDUAL for a in answers) / len(answers),
    }


def predict_variant(records: str, runs: str, out: str, solution: str, extra: list[str]) -> tuple[dict, dict]:
    run([sys.executable, "-m", "tfwhale.predict", "--runs", runs, "--records", records, "--out", out,
         "--solution", solution, "--examples", "0", *extra])  # fmt: skip
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    table = pd.read_csv(os.path.join(out, "submission.csv"))
    return report, dict(zip(table["image"], table["predictions"].str.split(), strict=True))


def main() -> None:
    args = parse_args()
    work = args.work or tempfile.mkdtemp(prefix="tfwhale-new-")
    data, records = make_records(args, work)
    recipe = f"{os.path.basename(records)}-{args.config}-{args.epochs or 'its'}-epochs"
    runs = os.path.join(work, f"runs-{recipe}")
    epochs = ["--set", f"train.epochs={args.epochs}"] if args.epochs else []
    run([sys.executable, "-m", "tfwhale.train", "--config", args.config, "--records", records, "--out", runs,
         "--folds", "all", "--set", "data.image_size=null", *epochs])  # fmt: skip
    solution = pd.read_csv(os.path.join(data, "test_solution.csv"))
    truths = solution["individual_id"].tolist()
    rows = {name: scores(truths, answers) for name, answers in
            floors(solution, pd.read_csv(os.path.join(data, "train.csv"))).items()}  # fmt: skip
    details = {}
    # One output folder: each variant rewrites the outputs and reuses the cached embeddings.
    out = os.path.join(work, f"predict-{recipe}")
    for name, extra in VARIANTS.items():
        report, answers = predict_variant(records, runs, out, os.path.join(data, "test_solution.csv"), extra)
        rows[name] = scores(truths, [answers[image] for image in solution["image"]])
        details[name] = report["threshold"]
    print_table(rows, details, solution, args)


def print_table(rows: dict, details: dict, solution: pd.DataFrame, args: argparse.Namespace) -> None:
    share = (solution["individual_id"] == NEW_INDIVIDUAL).mean()
    print(f"\n{len(solution)} test queries, {share:.1%} of them new; {args.individuals} animals, "
          f"{args.config} 5 folds x {args.epochs or 'its'} epochs at {args.size} px")  # fmt: skip
    print(f"| {'answer':<44} | MAP@5 | known | new | new first | threshold |")
    print(f"|{'-' * 46}|------:|------:|----:|----------:|----------:|")
    for name, row in rows.items():
        threshold = details.get(name, {}).get("value")
        shown = "" if threshold is None else f"{threshold:.4f}"
        print(f"| {name:<44} | {row['map5']:.3f} | {row['known']:.3f} | {row['new']:.3f} | "
              f"{row['new_first']:>8.1%} | {shown:>9} |")  # fmt: skip
    for name, threshold in details.items():
        facts = {k: threshold.get(k) for k in ("tuned_on_oof", "oof_known", "oof_new", "separation_auc")}
        print(f"{name}: {facts} warnings={threshold.get('warnings')}")


if __name__ == "__main__":
    main()
