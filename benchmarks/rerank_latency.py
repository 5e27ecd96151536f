"""Benchmark of the local re-rank's cost per query: upload -> candidates with and without it (not a test).

Real photos (default ../shared/data/nyala-dev, 800 px): one seeded split as benchmarks/quality_real.py
makes it (benchmarks/_real_split.py), a day-one gallery of its training photos with local features
(python -m tfwhale.gallery, made once under --work), and its held-out queries as whole photos through
the engine the catalogue app runs (tfwhale.serve.engine.Engine.identify_bytes: crop, query SIFT, embed,
search + re-rank, answer). Each query is answered once per mode, the modes interleaved so that the
machine's load falls on all of them alike:
  none          the global-only path: the same engine with its local re-rank switched off (the baseline)
  local K=k     the fused re-rank verifying the embedding's top-k individuals (3 best-voted photos each)
                and LNBNN's top-30 photos (the gallery's other settings as made); with --per-individual,
                its n best-voted photos each instead of 3
Each mode has its own engine over the same loaded models and gallery (the engine keeps the re-rank it
was made with). Printed: median milliseconds per step (the query SIFT runs in a thread beside decode and
embed: "SIFT wait" is what the answer still waited for it after the embedding), the total (wall) and the
process's CPU time (every thread: on a shared machine the steadier measure of the work; with --threads 1
it does not count BLAS threads that spin), each with its ratio to the baseline's.

    python3 dev.py bench rerank_latency                      # K=10 (the default) and K=20, ~3 min first
    python3 dev.py bench rerank_latency --k 20 --threads 1   # one BLAS/OpenCV thread
    python3 dev.py bench rerank_latency --k 20 --per-individual 3,2   # fewer photos of each verified
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace

from _real_split import add_task_arguments, make_split, read_photo_folder, write_task

from tfwhale.serve.engine import Engine

STEPS = (("decode", "decode/crop"), ("local_features", "query SIFT"), ("embed", "embed"),
         ("local_features_wait", "SIFT wait"), ("search", "search + re-rank"))  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add_task_arguments(parser, "nyala-dev", "/tmp/tfwhale-rerank-bench", species="nyala",
                       work_help="working folder, split and gallery kept")  # fmt: skip
    add("--seed", type=int, default=0, help="split seed (0)")
    add("--size", type=int, default=224, help="the gallery's crop size (224)")
    add("--k", default="10,20", help="shortlist_k values to time, comma-separated (10,20)")
    add("--repeats", type=int, default=1, help="passes over the queries (1)")
    add("--threads", type=int, help="pin BLAS and OpenCV to this many threads (default: theirs)")
    add("--per-individual", help="photos verified of each top-K individual, comma-separated values to time "
        "(default: the gallery's)")  # fmt: skip
    return parser.parse_args()


def make_gallery(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(the gallery folder, the query photos): the seeded split and its day-one gallery, made once."""
    split = make_split(read_photo_folder(args.photos), seed=args.seed)
    task = os.path.join(args.work, f"task-seed{args.seed}")
    write_task(split, task, species=args.species)
    gallery = os.path.join(args.work, f"gallery-seed{args.seed}-{args.size}px")
    if not os.path.exists(os.path.join(gallery, "gallery.json")):
        shutil.rmtree(gallery, ignore_errors=True)  # an interrupted one: made again
        print(f"[{time.strftime('%H:%M:%S')}] python -m tfwhale.gallery -> {gallery}", flush=True)
        subprocess.run([sys.executable, "-m", "tfwhale.gallery", "--photos", task, "--out", gallery,
                        "--size", str(args.size), "-q"], check=True)  # fmt: skip
    return gallery, [photo for photo, _ in split.queries]


def engine_with(engine: Engine, local) -> Engine:
    """An engine over `engine`'s loaded models and gallery with another re-rank (None: global only)."""
    path = copy.copy(engine.path)
    path.local = local
    return Engine(path)


def time_query(engine: Engine, data: bytes) -> dict[str, float]:
    """Seconds per step of one upload -> candidates."""
    start, cpu = time.perf_counter(), time.process_time()
    _, result = engine.identify_bytes(data, None, "query.jpg")
    timings = {key: result.timings.get(key, 0.0) for key, _ in STEPS}
    timings["total"] = time.perf_counter() - start
    timings["cpu"] = time.process_time() - cpu
    return timings


def main() -> None:
    args = parse_args()
    if args.threads:
        os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import cv2  # after the BLAS variables: numpy reads them when first imported by the engine

    if args.threads:
        cv2.setNumThreads(args.threads)
    gallery, queries = make_gallery(args)
    engine = Engine.load(gallery)
    local = engine.path.local
    if local is None:
        raise SystemExit(f"{gallery}: made without local features")
    modes = {"none (global only)": engine_with(engine, None)}
    for k in (int(v) for v in args.k.split(",")):
        for each in args.per_individual.split(",") if args.per_individual else [None]:
            rerank = replace(local.settings.rerank, shortlist_k=k)
            if each is not None:
                rerank = replace(rerank, photos_per_individual=int(each))
            tuned = copy.copy(local)  # the same loaded gallery and index, another shortlist
            tuned.settings = replace(local.settings, rerank=rerank)
            name = f"local K={k}" + (f", {each} photos each" if each is not None else "")
            modes[name] = engine_with(engine, tuned)
    photos = []
    for path in queries:
        with open(path, "rb") as f:
            photos.append(f.read())
    for mode in modes.values():  # warm up: the first call builds the model's predict step
        time_query(mode, photos[0])
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
    for _ in range(args.repeats):
        for data in photos:
            for name, mode in modes.items():
                runs[name].append(time_query(mode, data))
    print_table(args, gallery, engine, len(photos), runs)


def print_table(args, gallery: str, engine: Engine, n_queries: int, runs: dict) -> None:
    keys = (*dict(STEPS), "total", "cpu")
    medians = {name: {key: 1000 * statistics.median(r[key] for r in rows) for key in keys}
               for name, rows in runs.items()}  # fmt: skip
    baseline = medians["none (global only)"]
    threads = f"{args.threads} thread(s)" if args.threads else "default threads"
    print(f"\nupload -> candidates, {n_queries} real queries x {args.repeats} (whole photos), day-one "
          f"gallery of {engine.size} photos ({gallery}); median ms; {threads}; load "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")  # fmt: skip
    titles = " | ".join(title for _, title in STEPS)
    print(f"| mode | {titles} | total | x global only | CPU | x global only |")
    print("|---|" + "--:|" * (len(STEPS) + 4))
    for name, m in medians.items():
        steps = " | ".join(f"{m[key]:.1f}" for key, _ in STEPS)
        wall, cpu = m["total"] / baseline["total"], m["cpu"] / baseline["cpu"]
        print(f"| {name} | {steps} | **{m['total']:.0f}** | {wall:.2f} | {m['cpu']:.0f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
