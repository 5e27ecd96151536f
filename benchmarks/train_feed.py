"""Benchmark of the train stage on CPU: is the input pipeline ever the bottleneck? (prints tables, not a test)

The model is built and compiled the way the trainer builds it (fold_trainer.build_compiled, default CPU
runtime) and fit for the same number of steps on two feeds, alternately, in one process:
  pipeline   tfwhale.feed.data.train_dataset over records (decode + augment running beside the model)
  in memory  one batch taken from that pipeline, held as a tensor and repeated (no input work at all)
images/s counts the timed steps only (the first --warmup steps of every fit, tracing and iterator start
included, are left out). Target: pipeline / in-memory >= 0.9. The pipeline alone (no model) is timed too.
Photos and records are made once (~1 minute) and kept in --cache.

    python benchmarks/train_feed.py                  # tiny_cpu (TinyConvNet, 96 px, batch 16), ~1.5 min
    python benchmarks/train_feed.py --quick          # shorter fits, ~45 s
    python benchmarks/train_feed.py --set model.backbone=EfficientNetB0 --set data.image_size=64
    python benchmarks/train_feed.py --set data.num_parallel_calls=1     # try a pipeline setting
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import statistics
import time
from dataclasses import dataclass, field

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _records
from _records import Timing


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="shorter fits, fewer rounds (--fit-seconds 4 --rounds 2)")
    add("--config", default="tiny_cpu", help="config name or YAML path (tiny_cpu)")
    add("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override, repeatable")
    add("--steps", type=int, help="timed steps per fit (default: as many as fill --fit-seconds)")
    add("--fit-seconds", type=float, default=8.0, help="timed seconds per fit when --steps is not given (8)")
    add("--warmup", type=int, default=5, help="untimed steps at the start of every fit (5)")
    add("--rounds", type=int, default=4, help="fits per feed, alternating the feeds (4)")
    _records.add_record_options(add)
    args = parser.parse_args()
    if args.quick:
        args.fit_seconds, args.rounds = 4.0, 2
    return args


def step_clock():
    """(list of times, keras callback that appends the time of every finished step to it)."""
    import keras

    times: list[float] = []
    callback = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda *_, **__: times.append(time.perf_counter())
    )
    return times, callback


def timed_fit(model, dataset, batch: int, warmup: int, steps: int) -> tuple[Timing, float]:
    """Timing of the steps after `warmup`, and their median step time (robust to bursts of outside load)."""
    times, clock = step_clock()
    start_wall, start_cpu = time.perf_counter(), _records.cpu_seconds()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[clock])
    fit_wall, fit_cpu = time.perf_counter() - start_wall, _records.cpu_seconds() - start_cpu
    timed = times[warmup - 1 :]
    wall = timed[-1] - timed[0]
    median_step = statistics.median(later - earlier for earlier, later in itertools.pairwise(timed))
    # CPU time is read around the whole fit only: the timed steps get their share of it by wall time
    return Timing(steps * batch, wall, fit_cpu * wall / fit_wall), median_step


def time_pipeline_alone(dataset, batch: int, warmup: int, steps: int) -> Timing:
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start_wall, start_cpu = time.perf_counter(), _records.cpu_seconds()
    for _ in range(steps):
        next(iterator)
    return Timing(steps * batch, time.perf_counter() - start_wall, _records.cpu_seconds() - start_cpu)


def build(cfg, manifest):
    """(compiled model, training model, fold plan) exactly as the trainer makes them on this CPU."""
    from tfwhale.training.distribute import get_runtime
    from tfwhale.training.fold_trainer import build_compiled, plan_fold

    runtime = get_runtime(None)
    plan = plan_fold(cfg, manifest, 0, "unused-run-dir", runtime)
    model, train_model, _ = build_compiled(cfg, manifest, plan, runtime)
    return model, train_model, plan


def feeds(cfg, manifest, plan, output_names):
    """{"pipeline": train_dataset as the trainer maps it, "in memory": one of its batches, repeated}."""
    import tensorflow as tf

    from tfwhale.feed.data import train_dataset
    from tfwhale.training.fold_trainer import to_targets

    pipeline = train_dataset(manifest, plan.train_folds, cfg, plan.global_batch, cfg.train.seed)
    pipeline = pipeline.map(to_targets(output_names))
    one_batch = next(iter(pipeline))
    return {"in memory": tf.data.Dataset.from_tensors(one_batch).repeat(), "pipeline": pipeline}


@dataclass
class FeedRuns:
    timings: list[Timing] = field(default_factory=list)
    median_steps: list[float] = field(default_factory=list)  # seconds, one per fit

    def median_rate(self) -> float:
        return statistics.median(t.per_second for t in self.timings)

    def median_step_rate(self, batch: int) -> float:
        return batch / statistics.median(self.median_steps)

    def per_cpu_second(self) -> float:
        return sum(t.images for t in self.timings) / sum(t.cpu for t in self.timings)

    def cpu_use(self) -> float:
        return sum(t.cpu for t in self.timings) / sum(t.wall for t in self.timings)


def choose_steps(model, dataset, args, batch: int) -> int:
    """--steps, or as many steps as fill --fit-seconds at the in-memory speed (this fit also traces)."""
    _, median_step = timed_fit(model, dataset, batch, args.warmup, 10)
    steps = args.steps or max(10, round(args.fit_seconds / median_step))
    logging.info("model step %.0f ms in memory -> %d timed steps per fit", 1000 * median_step, steps)
    return steps


def run_rounds(model, datasets, args, batch: int) -> dict[str, FeedRuns]:
    """--rounds fits per feed, the order alternating each round so drift in the machine's load cancels."""
    runs = {name: FeedRuns() for name in datasets}
    names = list(datasets)
    for round_index in range(args.rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            timing, median_step = timed_fit(model, datasets[name], batch, args.warmup, args.steps)
            runs[name].timings.append(timing)
            runs[name].median_steps.append(median_step)
            logging.info(
                "round %d, %s: %.1f images/s (load %s)",
                round_index + 1,
                name,
                timing.per_second,
                _records.load_average(),
            )
    return runs


def print_table(cfg, plan, runs: dict[str, FeedRuns], alone: Timing, args) -> None:
    batch = plan.global_batch
    print(
        f"\nfit on CPU: {cfg.model.backbone} (weights={cfg.model.weights}), {cfg.data.image_size} px, "
        f"batch {batch}, head {cfg.model.head}; {args.steps} timed steps per fit after "
        f"{args.warmup} warm-up steps, {args.rounds} fits per feed"
    )
    header = f"{'feed':<15} {'images/s per fit':<34} {'median':>7} {'by median step':>15}"
    print(f"{header} {'CPU use':>8} {'images/CPU-s':>13}")
    for name, feed in runs.items():
        per_fit = ", ".join(f"{t.per_second:.1f}" for t in feed.timings)
        print(
            f"{name:<15} {per_fit:<34} {feed.median_rate():>7.1f} {feed.median_step_rate(batch):>15.1f} "
            f"{feed.cpu_use():>7.2f}x {feed.per_cpu_second():>13.1f}"
        )
    print(
        f"{'pipeline alone':<15} {'(no model, all cores)':<34} {alone.per_second:>7.1f} {'':>15} "
        f"{alone.cpu / alone.wall:>7.2f}x {alone.per_cpu_second:>13.1f}"
    )
    print_ratios(runs, alone, batch)


def print_ratios(runs: dict[str, FeedRuns], alone: Timing, batch: int) -> None:
    pipeline, memory = runs["pipeline"], runs["in memory"]
    ratio = pipeline.median_rate() / memory.median_rate()
    rounds = zip(pipeline.timings, memory.timings, strict=True)
    pairs = ", ".join(f"{p.per_second / m.per_second:.3f}" for p, m in rounds)
    print(f"ratio pipeline / in memory, images/s: {ratio:.3f} (medians of the fits; per round {pairs})")
    step_ratio = pipeline.median_step_rate(batch) / memory.median_step_rate(batch)
    print(f"  by median step time: {step_ratio:.3f}")
    print(f"  by images per CPU-second: {pipeline.per_cpu_second() / memory.per_cpu_second():.3f}")
    model_cpu_ms = 1000 * batch / memory.per_cpu_second()
    input_cpu_ms = 1000 * batch / alone.per_cpu_second
    print(
        f"  CPU per batch: model step {model_cpu_ms:.0f} ms, pipeline {input_cpu_ms:.1f} ms -> at best "
        f"{model_cpu_ms / (model_cpu_ms + input_cpu_ms):.3f} where the model alone keeps every core busy"
    )
    supply = alone.per_second / memory.median_rate()
    print(f"  pipeline alone / model in memory: {supply:.1f}x the images the model takes")
    print(f"-> {'meets' if ratio >= 0.9 else 'MISSES'} the 0.9 target")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_before = _records.load_average()

    from tfwhale.core.config import load_config

    cfg = load_config(args.config, args.set)
    root = _records.bench_records(args.cache, cfg.data.image_size, args.individuals)

    from tfwhale.contracts.records import load_manifest

    manifest = load_manifest(root)
    model, train_model, plan = build(cfg, manifest)
    datasets = feeds(cfg, manifest, plan, train_model.output.keys())
    args.steps = choose_steps(model, datasets["in memory"], args, plan.global_batch)
    start_load = _records.load_average()
    runs = run_rounds(model, datasets, args, plan.global_batch)
    alone = time_pipeline_alone(datasets["pipeline"], plan.global_batch, args.warmup, args.steps)
    trained = manifest.count("train", plan.train_folds)
    print(f"\nrecords: {root}: {trained} photos in folds {plan.train_folds} (the trainer's fold 0 split)")
    print(
        f"machine: {os.cpu_count()} CPUs; load average before {load_before}, at the start of timing "
        f"{start_load}, after {_records.load_average()}"
    )
    print_table(cfg, plan, runs, alone, args)


if __name__ == "__main__":
    main()
