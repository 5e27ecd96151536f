"""The whole pipeline on data it makes itself: synthetic photos -> TFRecords -> 2 tiny folds -> predictions.

    python -m tfwhale.demo [--out demo_out]

Each stage runs as the command a user would type (printed before it runs), so every step can be
repeated by hand. Run again to resume: finished stages are reused.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

from tfwhale.contracts.records import MANIFEST_NAME
from tfwhale.core import files


@dataclass(frozen=True)
class Step:
    title: str
    shown: list[str]  # the command as a user types it
    module: str  # what this process runs: python -m MODULE ARGS
    args: list[str]
    done_marker: str | None = None  # a file whose presence means the step is finished


def plan_steps(
    out: str, individuals: int, folds: str, size: int, epochs: int | None, sets: list[str]
) -> list[Step]:
    data, rec, run, pred = (files.join(out, name) for name in ("data", "records", "runs/tiny", "predict"))
    train_extra = ["--set", f"train.epochs={epochs}"] if epochs else []
    for item in sets:
        train_extra += ["--set", item]
    build = ["--data", data, "--out", rec, "--size", str(size), "--boxes", files.join(data, "boxes.csv")]
    train = ["--config", "tiny_cpu", "--records", rec, "--out", run, "--folds", folds, *train_extra]
    predict = ["--runs", run, "--records", rec, "--out", pred,
               "--solution", files.join(data, "test_solution.csv"),
               "--sample-submission", files.join(data, "sample_submission.csv")]  # fmt: skip
    synth = [data, "--individuals", str(individuals), "--min-photos", "8"]
    return [
        Step("1/4 synthetic photos", ["python", "-m", "tfwhale.synthetic", *synth], "tfwhale.synthetic",
             synth, files.join(data, "train.csv")),
        Step("2/4 TFRecords", ["build-tfrecords", *build], "tfrecords_builder", build,
             files.join(rec, MANIFEST_NAME)),
        Step("3/4 training", ["python", "-m", "tfwhale.train", *train], "tfwhale.train", train),
        Step("4/4 prediction", ["python", "-m", "tfwhale.predict", *predict], "tfwhale.predict", predict),
    ]  # fmt: skip


def run_step(step: Step) -> float:
    print(f"\n=== {step.title}\n$ {shlex.join(step.shown)}", flush=True)
    if step.done_marker and files.exists(step.done_marker):
        print(f"(already done: {step.done_marker} exists)", flush=True)
        return 0.0
    started = time.time()
    code = subprocess.call([sys.executable, "-m", step.module, *step.args])
    if code not in (0, 3):  # 3: the builder rejected some images, which the demo reports but survives
        raise SystemExit(f"demo: step '{step.title}' failed with exit code {code}; see the messages above")
    return time.time() - started


def summarize(out: str, steps: list[Step], seconds: list[float]) -> None:
    pred = files.join(out, "predict")
    report = files.read_json(files.join(pred, "report.json"))
    test = report.get("test", {})
    print("\n=== done in {:.0f} s ({})".format(sum(seconds), ", ".join(f"{s:.0f} s" for s in seconds)))
    if "map5" in test:
        print(f"MAP@5 on the synthetic test set: {test['map5']:.3f}  (ground truth: data/test_solution.csv)")
    oof = report.get("oof", {})
    if "map5" in oof:
        threshold = report.get("threshold", {}).get("value")
        print(f"out-of-fold MAP@5: {oof['map5']:.3f} at new_individual threshold {threshold}")
    print(f"submission: {files.join(pred, 'submission.csv')}")
    print(f"report:     {files.join(pred, 'report.json')}")
    pictures = [n for n in files.listdir(pred) if n.endswith(".png")]
    print("pictures:   " + ", ".join(files.join(pred, n) for n in pictures))
    print("\nThe commands it ran (repeat any of them by hand):")
    for step in steps:
        print("  " + shlex.join(step.shown))
    catalogue = shlex.join(
        ["python", "-m", "tfwhale.serve", "--gallery", pred, "--catalogue", files.join(out, "catalogue")]
    )
    print(f"\nNext, the catalogue app in the browser (python3 dev.py serve):\n  {catalogue}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfwhale.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="working folder (default: demo_out)")
    parser.add_argument("--individuals", type=int, default=150, help="synthetic individuals (150)")
    parser.add_argument("--folds", default="0,1", help="folds to train (of 5); default 0,1")
    parser.add_argument("--size", type=int, default=96, help="image size of the records (96, as tiny_cpu)")
    parser.add_argument("--epochs", type=int, help="override tiny_cpu's epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training override")
    args = parser.parse_args(argv)
    steps = plan_steps(args.out, args.individuals, args.folds, args.size, args.epochs, args.set)
    seconds = [run_step(step) for step in steps]
    summarize(args.out, steps, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
