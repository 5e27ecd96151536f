"""Benchmark of the train stage's input pipeline (prints tables; not a test), and the TPU host it implies.

Part 1: images/s of tfwhale.feed.data.train_dataset (read + parse + decode + augment + batch) over 768 px
records, for three augment settings (decode only; the default config; a heavy one with random resized
crop, rotation, shear and random erasing on top), once on one thread (num_parallel_calls=1, a private
tf.data threadpool of 1 thread, intra-op parallelism 1: the per-core rate) and once on all cores (the
pipeline as the trainer runs it). Per-core rate = images per CPU-second of this process, which other
processes on a shared machine disturb less than wall time.

Part 2: host cores a TPU v3-8 needs to be fed for EfficientNet-B7 at 768 px: the backbone's forward
multiply-adds counted layer by layer on keras' EfficientNetB7 (weights=None), x2 FLOPs per multiply-add,
x3 for training (forward + backward), against the TPU's peak at an assumed MXU utilisation.

    python benchmarks/input_pipeline.py              # ~1 minute (+ ~1 minute to make records, once)
    python benchmarks/input_pipeline.py --breakdown  # + the cost of each augment step, ~1.5 minutes
    python benchmarks/input_pipeline.py --quick      # fewer images per measurement, ~30 s
    python benchmarks/input_pipeline.py --images 512 --mxu-utilisation 0.2,0.3,0.5
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _records
from _records import Timing

NO_AUGMENT = (
    "augment.flip=false",
    "augment.brightness=0",
    "augment.contrast=0",
    "augment.saturation=0",
    "augment.hue=0",
)
CROP = ("augment.random_resized_crop=true",)
AFFINE = ("augment.rotation=15", "augment.shear=10")
ERASING = ("augment.erasing_prob=0.5",)
# (name, config overrides, also measured on all cores); each step adds ops to the one before it
AUGMENTS = [
    ("decode only", NO_AUGMENT, True),
    ("+ flip", (*NO_AUGMENT, "augment.flip=true"), False),
    ("default", (), True),  # flip + colour jitter
    ("+ crop", CROP, False),
    ("+ rot/shear", (*CROP, *AFFINE), False),
    ("heavy", (*CROP, *AFFINE, *ERASING), True),
]
HEAVY_NOTE = "default + random_resized_crop, rotation 15, shear 10, erasing_prob 0.5"

# bf16 FLOP/s of a v3-8 (4 chips, 8 cores) as Google announced it; its newer per-chip table says 123 TFLOP/s
# (492 for 4 chips), so this is the conservative of the two published figures
TPU_V3_8_PEAK = 420e12
PUBLISHED_B7_MACS_600 = 37e9  # EfficientNet paper, Table 2: "37B FLOPs", counted as multiply-adds
TRAIN_OVER_FORWARD = 3.0  # forward + backward (gradients wrt activations and weights) ~ 3 x forward


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="fewer images per measurement (--images 64)")
    add("--size", type=int, default=768, help="record image size, px (768)")
    add("--images", type=int, default=256, help="timed images per measurement (256)")
    add("--batch", type=int, default=16, help="batch size of the pipeline (16)")
    add("--min-seconds", type=float, default=4.0, help="time each measurement at least this long (4)")
    add("--warmup", type=int, default=3, help="batches read before the clock starts (3)")
    add("--breakdown", action="store_true", help="also time the steps from decode only to heavy (1 thread)")
    add(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="config override for every setting, repeatable (e.g. augment.fill_mode=constant)",
    )
    _records.add_record_options(add)
    add("--backbone", default="EfficientNetB7", help="model whose FLOPs set the TPU's appetite")
    add("--model-size", type=int, default=768, help="image size the model trains at (768)")
    add("--mxu-utilisation", default="0.3,0.5", help="assumed fractions of TPU peak (0.3,0.5)")
    add("--tpu-peak", type=float, default=TPU_V3_8_PEAK, help="TPU peak FLOP/s (v3-8 bf16: 420e12)")
    add("--host-vcpus", type=int, default=96, help="vCPUs of the TPU host (Kaggle TPU VM v3-8: 96)")
    add("--skip-flops", action="store_true", help="no model build; only the published FLOPs, scaled")
    args = parser.parse_args()
    if args.quick:
        args.images, args.min_seconds = 64, 1.5
    return args


def pipeline(manifest, overrides: list[str], batch: int, single_thread: bool):
    """tfwhale.feed.data.train_dataset over every fold; on one thread if asked."""
    import tensorflow as tf

    from tfwhale.core.config import load_config
    from tfwhale.feed.data import train_dataset

    threads = ("data.num_parallel_calls=1",) if single_thread else ()
    cfg = load_config(None, [f"data.image_size={manifest.image_size}", *threads, *overrides])
    dataset = train_dataset(manifest, list(range(manifest.n_folds)), cfg, batch, seed=0)
    if not single_thread:
        return dataset
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def time_pipeline(dataset, images: int, min_seconds: float, warmup: int) -> Timing:
    """Batches after `warmup` ones, until at least `images` images and `min_seconds` have passed."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start_wall, start_cpu = time.perf_counter(), _records.cpu_seconds()
    count = 0
    while count < images or time.perf_counter() - start_wall < min_seconds:
        count += int(next(iterator)[0]["image"].shape[0])
    return Timing(count, time.perf_counter() - start_wall, _records.cpu_seconds() - start_cpu)


def measure_all(manifest, args: argparse.Namespace) -> dict[tuple[str, bool], Timing]:
    """(augment name, single thread) -> timing; the breakdown steps only with --breakdown, on one thread."""
    results = {}
    for name, overrides, main_setting in AUGMENTS:
        for single in (True, False):
            if not (main_setting or (args.breakdown and single)):
                continue
            dataset = pipeline(manifest, [*overrides, *args.set], args.batch, single)
            timing = time_pipeline(dataset, args.images, args.min_seconds, args.warmup)
            results[name, single] = timing
            logging.info(
                "%s, %s: %.1f images/s, %.1f per CPU-second, load %s",
                name,
                "1 thread" if single else "all cores",
                timing.per_second,
                timing.per_cpu_second,
                _records.load_average(),
            )
    return results


def print_pipeline_table(results: dict[tuple[str, bool], Timing], size: int, cpus: int) -> None:
    print(f"\nInput pipeline, {size} px records -> uint8 batches (read, parse, decode, augment, batch)")
    print(f"default = flip + colour jitter (brightness, contrast, saturation, hue); heavy = {HEAVY_NOTE}")
    header = f"{'augment':<12} {'threads':<8} {'images':>6} {'wall s':>7} {'images/s':>9} {'CPU s':>7}"
    print(header + f" {'CPU use':>8} {'images/CPU-s':>13} {'CPU ms/image':>13}")
    for (name, single), t in sorted(results.items(), key=lambda item: not item[0][1]):
        threads = "1" if single else f"all ({cpus})"
        print(
            f"{name:<12} {threads:<8} {t.images:>6} {t.wall:>7.2f} {t.per_second:>9.1f} {t.cpu:>7.2f} "
            f"{t.cpu / t.wall:>7.2f}x {t.per_cpu_second:>13.1f} {1000 * t.cpu / t.images:>13.2f}"
        )
    for name, _, main_setting in AUGMENTS:
        if main_setting:
            one, every = results[name, True], results[name, False]
            print(f"  {name}: all cores / 1 thread = {every.per_second / one.per_second:.2f}x images/s")


def count_forward_macs(backbone: str, image_size: int) -> float:
    """Multiply-adds of one forward pass: every Conv2D, DepthwiseConv2D and Dense layer of the backbone.

    Elementwise work (batch norm, swish, squeeze-excite scaling) is left out: on the MXU it is not
    matrix work, and TF's profiler puts it at ~2% of B7's FLOPs (123.5 G in all at 768 px).
    """
    import keras

    from tfwhale.nets.model import build_backbone

    model = build_backbone(backbone, image_size, weights=None)
    macs = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, channels, multiplier = layer.kernel.shape
            _, height, width, _ = layer.output.shape
            macs += height * width * kh * kw * channels * multiplier
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, per_group, filters = layer.kernel.shape
            _, height, width, _ = layer.output.shape
            macs += height * width * kh * kw * per_group * filters
        elif isinstance(layer, keras.layers.Dense):
            macs += layer.kernel.shape[0] * layer.kernel.shape[1]
    return macs


def forward_macs(args: argparse.Namespace) -> tuple[float, str]:
    """Multiply-adds of one forward pass, and where the number comes from (both printed)."""
    is_b7 = args.backbone == "EfficientNetB7"
    scale = (args.model_size / 600) ** 2
    if is_b7:
        published = PUBLISHED_B7_MACS_600 * scale
        print(
            f"  published B7: 37 G multiply-adds at 600 px x ({args.model_size}/600)^2 "
            f"= {published / 1e9:.1f} GMAC"
        )
    if args.skip_flops:
        if not is_b7:
            raise SystemExit("--skip-flops needs --backbone EfficientNetB7 (the only published count here)")
        return published, "the published count, scaled"
    start = time.perf_counter()
    macs = count_forward_macs(args.backbone, args.model_size)
    print(
        f"  counted on keras {args.backbone} (weights=None), conv + dense layers: {macs / 1e9:.1f} GMAC "
        f"({time.perf_counter() - start:.0f} s to build)"
    )
    return macs, "the count"


def print_tpu_estimate(args: argparse.Namespace, results: dict[tuple[str, bool], Timing]) -> None:
    peak = args.tpu_peak / 1e12
    print(f"\nTPU feed estimate: {args.backbone} at {args.model_size} px, TPU peak {peak:.0f} TFLOP/s")
    macs, source = forward_macs(args)
    train_flops = 2 * macs * TRAIN_OVER_FORWARD
    print(
        f"  used {source}: forward {2 * macs / 1e9:.1f} GFLOP/image (2 FLOPs per multiply-add), "
        f"training x{TRAIN_OVER_FORWARD:.0f} = {train_flops / 1e9:.0f} GFLOP/image"
    )
    per_core = {name: results[name, True].per_cpu_second for name in ("default", "heavy")}
    rates = ", ".join(f"{name} {rate:.1f}" for name, rate in per_core.items())
    print(f"  per-core pipeline rate (images per CPU-second, 1 thread): {rates}")
    print(
        f"  {'MXU utilisation':<16} {'TPU images/s':>12} {'cores, default aug':>19} "
        f"{'cores, heavy aug':>17}  within {args.host_vcpus} vCPUs?"
    )
    utilisations = [float(u) for u in args.mxu_utilisation.split(",")] + [1.0]
    for utilisation in utilisations:
        consumed = args.tpu_peak * utilisation / train_flops
        cores = {name: consumed / rate for name, rate in per_core.items()}
        fits = "yes" if max(cores.values()) <= args.host_vcpus else "no"
        label = f"{utilisation:.0%}" + (" (peak)" if utilisation == 1.0 else "")
        print(f"  {label:<16} {consumed:>12.0f} {cores['default']:>19.1f} {cores['heavy']:>17.1f}  {fits}")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_before = _records.load_average()
    root = _records.bench_records(args.cache, args.size, args.individuals)

    from tfwhale.contracts.records import load_manifest

    manifest = load_manifest(root)
    jpeg_bytes = sum(shard["bytes"] for shard in manifest.shards("train")) / manifest.count("train")
    start_load = _records.load_average()
    results = measure_all(manifest, args)
    print(f"\nrecords: {root}: {manifest.count('train')} photos, ~{jpeg_bytes / 1e3:.0f} kB per record")
    print(
        f"machine: {os.cpu_count()} CPUs; load average before {load_before}, at the start of timing "
        f"{start_load}, after {_records.load_average()}"
    )
    print_pipeline_table(results, args.size, os.cpu_count() or 1)
    print_tpu_estimate(args, results)


if __name__ == "__main__":
    main()
