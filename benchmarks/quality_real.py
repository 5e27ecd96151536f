"""Benchmark of identification quality on real photos: one seeded split, every recipe, one table.

A folder of ID/photo images (default ../shared/data/lion: 94 lions, 3-11 photos each) becomes a task in
the Kaggle layout (benchmarks/_real_split.py): one held-out query photo per individual with >= 3 photos,
about 20% of the queries showing individuals absent from training (truth new_individual). Every row runs
the project's own commands: build-tfrecords once, then python -m tfwhale.train (fold 0 of --folds) and
python -m tfwhale.predict (threshold tuned on the fold's out-of-fold predictions), and is
scored on the same queries. Columns: MAP@5, known-only MAP@5, known top-1 of the plain ranking (no
new_individual inserted), new_individual precision and recall (as the first answer), the threshold
predict used (tuned on OOF) next to the best threshold on the queries themselves, and the wall and CPU
time of train + predict.

    python3 dev.py bench quality_real                         # every row, the configs' epochs
    python3 dev.py bench quality_real --size 128 --epochs 8 --rows floors,imagenet,frozen,lite0,tiny
    python3 dev.py bench quality_real --extra "lite0 m=0.5:model.arc_m=0.5"   # a recipe change as a row
    python3 dev.py bench quality_real --rows floors,dayone --seed 1   # the day-one gallery, no training
    python3 dev.py bench quality_real --rows dayone,dayone_sift --seed 1   # ... and with SIFT fused
The dayone row runs python -m tfwhale.gallery on the split's training photos (no training, threshold tuned
leave-one-out within them) and python -m tfwhale.identify on the queries; its wall time is both commands.
Rows are kept under --work: a rerun reuses finished builds, runs and predictions (--fresh: start over).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import yaml
from _real_split import NEW_INDIVIDUAL, add_task_arguments, make_split, read_photo_folder, write_task

from tfwhale.core.config import Config, config_to_dict, load_config
from tfwhale.core.metrics import map_at_k
from tfwhale.retrieval.threshold import insert_new_individual

DEFAULT_CONFIG = "lite0_224"
# the config refuses a zero peak learning rate (a typo guard); 1e-12 leaves ImageNet's weights as they are
LR_ZERO = ["train.lr_start=0", "train.lr_max_per_sample=1e-12", "train.lr_min=0"]
# from scratch: tiny_cpu's learning rate (a pretrained recipe's backbone multiplier and freezing undone)
SCRATCH = ["train.backbone_lr_multiplier=1", "train.frozen_epochs=0", "train.freeze_bn=false",
           "train.lr_start=1e-4", "train.lr_max_per_sample=6.25e-5", "train.lr_min=1e-5"]  # fmt: skip


@dataclass(frozen=True)
class Row:
    title: str
    config: str | None  # None: a floor, no model
    overrides: tuple[str, ...] = ()
    all_epochs_frozen: bool = False  # frozen_epochs = epochs
    dayone: bool = False  # python -m tfwhale.gallery + identify, no training (config unused)
    local: bool = False  # the day-one gallery with SIFT features, re-ranked and fused (its default)


def rows(default: str) -> dict[str, Row]:
    pk = ("model.head=triplet", "data.batch_size=16", "data.ids_per_batch=4", "data.photos_per_id=4")
    return {
        "floors": Row("floors", None),
        "dayone": Row("day-one gallery: ImageNet Lite0, no training (tfwhale.gallery)", None, dayone=True),
        "dayone_sift": Row(
            "day-one gallery: ImageNet Lite0 + SIFT fused, no training (tfwhale.gallery)", None, dayone=True,
            local=True,
        ),
        "imagenet": Row(
            "ImageNet Lite0, no training (kNN)", default,
            ("train.epochs=1", "train.freeze_bn=true", *LR_ZERO), all_epochs_frozen=True,
        ),
        "frozen": Row("Lite0 frozen + trained neck/ArcFace", default, ("train.freeze_bn=true",), True),
        "lite0": Row(f"{default} fine-tuned, ArcFace (default)", default),
        "triplet": Row(f"{default}, triplet head (PK 4x4)", default, pk),
        "softmax": Row(f"{default}, softmax head", default, ("model.head=softmax",)),
        "flip_off": Row(f"{default}, augment.flip=false", default, ("augment.flip=false",)),
        "flip_new": Row(f"{default}, augment.flip=new_class", default, ("augment.flip=new_class",)),
        "tiny": Row("tiny_cpu from scratch", "tiny_cpu"),
        "b0": Row(
            "EfficientNetB0 from scratch", default,
            ("model.backbone=EfficientNetB0", "model.weights=null", *SCRATCH),
        ),
    }  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add_task_arguments(parser, "lion", os.path.join("/tmp", "tfwhale-quality-real"), species="lion")
    add("--rows", default="all", help="comma list of rows (all): " + ",".join(rows(DEFAULT_CONFIG)))
    add(
        "--config",
        default=DEFAULT_CONFIG,
        help=f"the default recipe the Lite0 rows start from ({DEFAULT_CONFIG})",
    )
    add("--extra", action="append", default=[], metavar="TITLE:K=V[,K=V]", help="one more row: the default "
        "recipe with these overrides (repeatable; kept under its title)")  # fmt: skip
    add("--size", type=int, default=224, help="records' image size (224)")
    add("--folds", type=int, default=5, help="folds of the build; fold 0 is trained (5)")
    add("--epochs", type=int, help="train.epochs of every trained row (default: each config's)")
    add("--set", action="append", default=[], metavar="K=V", help="override for every trained row")
    add("--new-share", type=float, default=0.2, help="share of queries of new individuals (0.2)")
    add("--seed", type=int, default=0, help="seed of the split (0)")
    add("--fresh", action="store_true", help="discard --work first")
    return parser.parse_args()


def run(command: list[str], log: str, ok=(0,), stdout: str | None = None) -> tuple[float, float]:
    """Run a project command, output to `log` (stdout to `stdout` when given); (wall s, CPU s of it and
    its children). An exit code outside `ok` stops the benchmark with the log's tail."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with open(log, "a") as out, open(stdout or os.devnull, "w") as answer:
        done = subprocess.run(command, stdout=answer if stdout else out, stderr=out)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in ok:
        with open(log) as f:
            tail = "".join(f.readlines()[-25:])
        raise SystemExit(f"{' '.join(command[:4])} ... failed (exit {done.returncode}); {log}:\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - start, cpu


def make_task(args: argparse.Namespace, build: bool = True) -> tuple[str, str, pd.DataFrame, pd.DataFrame]:
    """(records, solution path, train table, solution table): the split and the build (when `build`: a
    trained row needs it), done once."""
    data = task_dir(args)
    split = make_split(read_photo_folder(args.photos), new_share=args.new_share, seed=args.seed)
    paths = write_task(split, data, species=args.species)
    records = os.path.join(args.work, f"records-{args.size}px-{args.folds}folds-seed{args.seed}")
    if build and not os.path.exists(os.path.join(records, "manifest.json")):
        log = os.path.join(args.work, "build.log")
        run([sys.executable, "-m", "tfrecords_builder", "--data", data, "--out", records, "--size",
             str(args.size), "--folds", str(args.folds), "--overwrite", "-q"], log)  # fmt: skip
    return records, paths["solution"], pd.read_csv(paths["train_csv"]), pd.read_csv(paths["solution"])


def task_dir(args: argparse.Namespace) -> str:
    return os.path.join(args.work, f"task-seed{args.seed}-new{args.new_share}")


def dayone(args: argparse.Namespace, solution: pd.DataFrame, local: bool = False) -> dict:
    """The day-one row: tfwhale.gallery on the training photos, identify on the queries (cached); local:
    with its SIFT features and fused re-rank (its default), else --no-local-features."""
    data, key = task_dir(args), f"dayone{'-sift' if local else ''}-{args.size}px-seed{args.seed}"
    gallery, answers_path = os.path.join(args.work, "galleries", key), os.path.join(args.work, f"{key}.json")
    log = os.path.join(args.work, f"{key}.log")
    if not os.path.exists(answers_path):
        shutil.rmtree(gallery, ignore_errors=True)
        print(f"[{time.strftime('%H:%M:%S')}] {key}: python -m tfwhale.gallery", flush=True)
        command = [sys.executable, "-m", "tfwhale.gallery", "--photos", data, "--out", gallery, "--size",
                   str(args.size), "-q", *([] if local else ["--no-local-features"])]  # fmt: skip
        gallery_wall, gallery_cpu = run(command, log, ok=(0, 3))
        photos = [os.path.join(data, "test_images", name) for name in solution["image"]]
        identify_wall, identify_cpu = run([sys.executable, "-m", "tfwhale.identify", *photos, "--gallery",
                                           gallery, "--json"], log, stdout=answers_path + ".tmp")  # fmt: skip
        with open(answers_path + ".tmp") as f:
            answers = json.load(f)
        with open(os.path.join(gallery, "gallery.json")) as f:
            manifest = json.load(f)
        result = {"answers": answers, "threshold": manifest["threshold"], "extra": manifest["extra"],
                  "gallery_wall": gallery_wall, "wall": gallery_wall + identify_wall,
                  "cpu": gallery_cpu + identify_cpu}  # fmt: skip
        with open(answers_path, "w") as f:
            json.dump(result, f, indent=1)
        os.remove(answers_path + ".tmp")
    with open(answers_path) as f:
        return json.load(f)


def dayone_row(result: dict, solution: pd.DataFrame) -> dict:
    """The day-one row scored like the others: identify's answers, and its ranking without the threshold."""
    by_name = {os.path.basename(a["photo"]): a for a in result["answers"]}
    truths, answers, labels, sims = solution["individual_id"].tolist(), [], [], []
    for name in solution["image"]:
        predictions = by_name[name]["predictions"]
        answers.append([p["label"] for p in predictions])
        ranked = [p for p in predictions if p["label"] != NEW_INDIVIDUAL]
        labels.append([p["label"] for p in ranked])
        sims.append([p["similarity"] for p in ranked])
    row = scores(truths, answers)
    known = [i for i, t in enumerate(truths) if t != NEW_INDIVIDUAL]
    row["top1"] = float(np.mean([bool(labels[i]) and labels[i][0] == truths[i] for i in known]))
    grid = np.round(np.arange(0.0, 1.0001, 0.01), 4)
    swept = [map_at_k(truths, insert_new_individual(labels, sims, float(t))) for t in grid]
    loo = result["extra"]["leave_one_out"]
    row.update(
        threshold=result["threshold"]["value"], oof_tuned=loo["tuned_threshold"],
        best_threshold=float(grid[int(np.argmax(swept))]), best_map5=float(max(swept)),
        wall=result["wall"], cpu=result["cpu"], epochs=0, oof_map5=loo["map5"],
        gallery_wall=result["gallery_wall"], threshold_source=result["threshold"]["source"],
    )  # fmt: skip
    return row


def train_and_predict(args, key: str, row: Row, records: str, solution: str) -> dict:
    """The row's run folder (fold 0) and predict output; results cached in results/<key>.json."""
    result_path = os.path.join(args.work, "results", f"{key}.json")
    # --epochs first: a row that sets its own (the untrained one: 1) keeps it
    epochs_set = [f"train.epochs={args.epochs}"] if args.epochs else []
    overrides = ["data.image_size=null", "train.verbose=2", *epochs_set, *row.overrides, *args.set]
    epochs = load_config(row.config, overrides).train.epochs
    if row.all_epochs_frozen:
        overrides.append(f"train.frozen_epochs={epochs}")
    settings = {"config": row.config, "overrides": overrides, "records": records}
    runs, out = os.path.join(args.work, "runs", key), os.path.join(args.work, "predict", key)
    if os.path.exists(result_path):
        with open(result_path) as f:
            cached = json.load(f)
        if cached["settings"] == settings and same_recipe(runs, load_config(row.config, overrides)):
            return cached
    for folder in (runs, out):
        shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.dirname(result_path), exist_ok=True)
    log = os.path.join(args.work, f"{key}.log")
    sets = [x for o in overrides for x in ("--set", o)]
    print(f"[{time.strftime('%H:%M:%S')}] {key}: train {row.config} {' '.join(overrides)}", flush=True)
    train_wall, train_cpu = run([sys.executable, "-m", "tfwhale.train", "--config", row.config, "--records",
                                 records, "--out", runs, "--fold", "0", *sets], log)  # fmt: skip
    predict_wall, predict_cpu = run([sys.executable, "-m", "tfwhale.predict", "--runs", runs, "--records",
                                     records, "--out", out, "--solution", solution, "--examples", "8",
                                     "--examples-seed", str(args.seed)], log)  # fmt: skip
    result = {"settings": settings, "out": out, "wall": train_wall + predict_wall,
              "cpu": train_cpu + predict_cpu, "train_wall": train_wall, "epochs": epochs}  # fmt: skip
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def same_recipe(runs: str, wanted: Config) -> bool:
    """Whether the run was trained with `wanted`'s training sections (an edited config makes it stale)."""
    path = os.path.join(runs, "config.yaml")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        saved = yaml.safe_load(f)
    expected = config_to_dict(wanted)
    for resolved in (saved, expected):
        resolved["data"].pop("image_size", None)  # null here, the records' size in the run
        resolved.pop("predict", None)  # predict's own defaults do not change what was trained
    return saved == expected


def ranked_queries(out: str, names: list[str]) -> tuple[list[list[str]], list[list[float]]]:
    """Per query (in `names` order): gallery individuals by their best photo's cosine, with the cosines
    (plain kNN on predict's saved embeddings, as predict ranks without post-processing)."""
    data = np.load(os.path.join(out, "embeddings.npz"))
    test_index = {n: i for i, n in enumerate(data["test_names"].tolist())}
    ids = data["train_ids"]
    individuals, inverse = np.unique(ids, return_inverse=True)
    sims = data["test"][[test_index[n] for n in names]] @ data["train"].T
    best = np.full((len(names), len(individuals)), -np.inf, np.float32)
    np.maximum.at(best.T, inverse, sims.T)
    order = np.argsort(-best, axis=1)[:, :50]
    labels = [individuals[o].tolist() for o in order]
    return labels, [best[q, o].tolist() for q, o in enumerate(order)]


def scores(truths: list[str], answers: list[list[str]]) -> dict[str, float]:
    truths_arr = np.asarray(truths)
    known, new = truths_arr != NEW_INDIVIDUAL, truths_arr == NEW_INDIVIDUAL
    said_new = np.asarray([a[0] == NEW_INDIVIDUAL for a in answers])
    top1 = np.asarray([a[0] == t for a, t in zip(answers, truths, strict=True)])
    return {
        "map5": map_at_k(truths, answers),
        "known": map_at_k(list(truths_arr[known]), [a for a, k in zip(answers, known, strict=True) if k]),
        "top1": float(top1[known].mean()),
        "new_precision": float(new[said_new].mean()) if said_new.any() else float("nan"),
        "new_recall": float(said_new[new].mean()) if new.any() else float("nan"),
    }


def model_row(result: dict, solution: pd.DataFrame) -> dict:
    with open(os.path.join(result["out"], "report.json")) as f:
        report = json.load(f)
    names, truths = solution["image"].tolist(), solution["individual_id"].tolist()
    submission = pd.read_csv(os.path.join(result["out"], "submission.csv"))
    answers = dict(zip(submission["image"], submission["predictions"].str.split(), strict=True))
    row = scores(truths, [answers[n] for n in names])
    labels, sims = ranked_queries(result["out"], names)
    known = [i for i, t in enumerate(truths) if t != NEW_INDIVIDUAL]
    row["top1"] = float(np.mean([labels[i][0] == truths[i] for i in known]))  # the ranking's, no threshold
    grid = np.round(np.arange(0.0, 1.0001, 0.01), 4)
    swept = [map_at_k(truths, insert_new_individual(labels, sims, float(t))) for t in grid]
    threshold = report["threshold"]
    row.update(
        threshold=threshold["value"], oof_tuned=threshold.get("tuned_on_oof"),
        best_threshold=float(grid[int(np.argmax(swept))]), best_map5=float(max(swept)),
        wall=result["wall"], cpu=result["cpu"], epochs=result["epochs"],
        oof_map5=(report.get("oof") or {}).get("map5"),
    )  # fmt: skip
    return row


def floor_rows(train: pd.DataFrame, solution: pd.DataFrame) -> dict[str, dict]:
    truths = solution["individual_id"].tolist()
    frequent = [name for name, _ in Counter(train["individual_id"]).most_common(5)]
    return {
        "floor: new_individual first": scores(truths, [[NEW_INDIVIDUAL, *frequent[:4]]] * len(truths)),
        "floor: most frequent": scores(truths, [frequent] * len(truths)),
    }


def selected(args: argparse.Namespace) -> dict[str, Row]:
    table = rows(args.config)
    keys = list(table) if args.rows == "all" else [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = [k for k in keys if k not in table]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows: {', '.join(table)}")
    chosen = {k: table[k] for k in keys}
    for i, extra in enumerate(args.extra):
        title, _, changes = extra.partition(":")
        key = "extra-" + (re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-").lower() or str(i))
        chosen[key] = Row(title.strip(), args.config, tuple(c for c in changes.split(",") if c))
    return chosen


def main() -> None:
    args = parse_args()
    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work, exist_ok=True)
    chosen = selected(args)
    trained = any(row.config is not None for row in chosen.values())
    records, solution_path, train, solution = make_task(args, build=trained)
    table: dict[str, dict] = {}
    for key, row in chosen.items():
        if row.dayone:
            table[row.title] = dayone_row(dayone(args, solution, row.local), solution)
            print_table(table, args, train, solution)
            continue
        if row.config is None:
            table.update(floor_rows(train, solution))
            continue
        result = train_and_predict(args, key, row, records, solution_path)
        table[row.title] = model_row(result, solution)
        print_table(table, args, train, solution)  # after every row: a cut-short run still reports
    print_table(table, args, train, solution)


def print_table(table: dict, args: argparse.Namespace, train: pd.DataFrame, solution: pd.DataFrame) -> None:
    new = int((solution["individual_id"] == NEW_INDIVIDUAL).sum())
    lines = [
        f"\n{os.path.basename(os.path.normpath(args.photos))}: {train['individual_id'].nunique()} "
        "individuals in training, "
        f"{len(train)} training photos; {len(solution)} queries ({len(solution) - new} known, {new} new); "
        f"{args.size} px records, fold 0 of {args.folds} trained, split seed {args.seed}",
        "| row | epochs | MAP@5 | known MAP@5 | known top-1 (kNN) | new prec. | new recall | threshold "
        "(OOF-tuned) | best on queries (MAP@5) | wall / CPU |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for title, r in table.items():
        if "threshold" in r:
            tuned = "" if r["oof_tuned"] is None else f" ({r['oof_tuned']:.3f})"
            model = (f"{r['threshold']:.3f}{tuned} | {r['best_threshold']:.2f} ({r['best_map5']:.3f}) | "
                     f"{r['wall'] / 60:.1f} / {r['cpu'] / 60:.1f} min")  # fmt: skip
            epochs = str(r["epochs"])
        else:
            model, epochs = "- | - | -", "-"
        lines.append(
            f"| {title} | {epochs} | {r['map5']:.3f} | {r['known']:.3f} | {r['top1']:.3f} | "
            f"{r['new_precision']:.2f} | {r['new_recall']:.2f} | {model} |"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    with open(os.path.join(args.work, "table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.work, f"table-seed{args.seed}.json"), "w") as f:  # for benchmarks/seeds.py
        json.dump({"photos": args.photos, "seed": args.seed, "rows": table}, f, indent=1)


if __name__ == "__main__":
    main()
