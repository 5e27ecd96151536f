"""Benchmark of the catalogue app: upload -> candidates for one photo (prints a markdown table; not a test).

The engine the app runs (tfwhale.serve.engine) on a 50,000-photo gallery of 15,000 individuals
(random unit embeddings: the search costs the same), one photo of 3000x2000 px with a box:
  decode/crop  the builder's crop contract (PIL draft decode, crop, resize, JPEG) + decode
  embed        the gallery's fold models (here: one, untrained: the cost does not depend on the weights)
  search       exact kNN over the gallery, top 5 individuals + new_individual, best photos per candidate
  render       the server-rendered candidates fragment (Jinja2)
for the tiny config (TinyConvNet at 96 px, 128 dims) and EfficientNet-Lite0 at 224 (EfficientNetB0
when this tfwhale has no Lite0). Baseline, measured in the same run: embedding one photo through
Model.predict, as identify did before (the engine uses predict_on_batch).

    python3 dev.py bench serve_latency              # ~2 minutes on 2 cores
    python3 dev.py bench serve_latency --repeats 5  # quicker look
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

import numpy as np
from PIL import Image

from tfwhale.contracts.gallery_arrays import GalleryArrays
from tfwhale.contracts.gallery_manifest import GalleryManifest, GalleryRun, ThresholdPolicy
from tfwhale.imaging.photo_crop import ImageSettings
from tfwhale.nets.model import build_models
from tfwhale.query.gallery import Gallery
from tfwhale.query.path import QueryPath
from tfwhale.retrieval.postprocess import l2_normalise
from tfwhale.serve.app import _env
from tfwhale.serve.engine import Engine

STEPS = ("decode/crop", "embed", "search", "render")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--gallery", type=int, default=50_000, help="gallery photos (50,000)")
    add("--individuals", type=int, default=15_000, help="gallery individuals (15,000)")
    add("--repeats", type=int, default=20, help="timed photos per config, after 3 warm-up ones (20)")
    add("--folds", type=int, default=1, help="fold models the gallery was made with (1)")
    add("--flip", action="store_true", help="flip TTA (doubles the embed step)")
    return parser.parse_args()


def configs() -> list[tuple[str, str, int, int]]:
    """(label, backbone, image size, embedding dim); Lite0 when this tfwhale has it, else B0."""
    try:
        from tfwhale.nets import efficientnet_lite  # noqa: F401 - only asks whether Lite0 is here

        big = ("EfficientNet-Lite0 @224", "EfficientNetLite0", 224, 512)
    except ImportError:
        big = ("EfficientNetB0 @224 (no Lite0 in this tfwhale)", "EfficientNetB0", 224, 512)
    return [("tiny (TinyConvNet @96)", "TinyConvNet", 96, 128), big]


def make_engine(args, backbone: str, size: int, dim: int) -> Engine:
    rng = np.random.default_rng(0)
    embeddings = l2_normalise(rng.standard_normal((args.gallery, dim), dtype=np.float32))
    ids = [f"ind{i % args.individuals:05d}" for i in range(args.gallery)]
    manifest = GalleryManifest(
        runs=(GalleryRun("runs/bench", 1.0, dim, {f"fold{k}": "" for k in range(args.folds)}),),
        flip_tta=args.flip, options={"k": 50, "backend": "exact"}, threshold=ThresholdPolicy(0.6),
        image=ImageSettings(size), records_root="", records_manifest_sha256="", embeddings_file="",
        embeddings_sha256="",
    )  # fmt: skip
    arrays = GalleryArrays(
        train=embeddings, train_names=[f"p{i}" for i in range(args.gallery)], train_ids=ids,
        train_species=["humpback_whale"] * len(ids), train_folds=np.zeros(len(ids), np.int64),
        test=np.zeros((0, dim), np.float32), test_names=[], class_names=sorted(set(ids)),
    )  # fmt: skip
    models = []
    for _ in range(args.folds):
        _, embedding_model = build_models(
            backbone=backbone, weights=None, image_size=size, n_classes=100, embedding_dim=dim
        )
        models.append(embedding_model)
    engine = Engine(QueryPath(Gallery("bench", manifest, arrays, ((),)), [models]))
    engine.name_photos(
        {f"p{i}": f"{i:064x}" for i in range(args.gallery)}, [f"p{i}" for i in range(args.gallery)]
    )
    return engine


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (30, 45, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((3000, 2000), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def time_one(engine: Engine, data: bytes, template) -> dict[str, float]:
    start = time.perf_counter()
    _, result = engine.identify_bytes(data, (600.0, 400.0, 2400.0, 1600.0), "bench.jpg")
    rendered = time.perf_counter()
    template.render(
        photo="0" * 64, result=result, name="bench.jpg", proposed="ind-00001", previous=[], assigned=None
    )
    done = time.perf_counter()
    t = result.timings
    return {"decode/crop": t["decode"], "embed": t["embed"], "search": t["search"], "render": done - rendered,
            "total": done - start}  # fmt: skip


def predict_baseline(engine: Engine, size: int, repeats: int) -> float:
    image = np.zeros((1, size, size, 3), np.uint8)
    fold_models = [tta.model for tta in engine.path.models[0]]
    fold_models[0].predict(image, verbose=0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for fold_model in fold_models:
            fold_model.predict(image, verbose=0)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    template = _env().get_template("_result.html")
    photos = [photo(seed) for seed in range(4)]
    rows = []
    for label, backbone, size, dim in configs():
        engine = make_engine(args, backbone, size, dim)
        for i in range(3):
            time_one(engine, photos[i % 4], template)
        runs = [time_one(engine, photos[i % 4], template) for i in range(args.repeats)]
        median = {step: 1000 * statistics.median(r[step] for r in runs) for step in (*STEPS, "total")}
        baseline = 1000 * predict_baseline(engine, size, args.repeats)
        rows.append((label, median, baseline))
    flip = ", flip TTA" if args.flip else ""
    load = f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    print(f"\nupload -> candidates, one photo (3000x2000 JPEG with a box), gallery {args.gallery:,} photos "
          f"of {args.individuals:,} individuals, {args.folds} fold model(s){flip}; "
          f"median of {args.repeats} (ms); {load}\n")  # fmt: skip
    print("| model | decode/crop | embed | search | render | total | embed via Model.predict (before) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, m, baseline in rows:
        ratio = baseline / m["embed"]
        steps = " | ".join(f"{m[step]:.1f}" for step in STEPS)
        print(f"| {label} | {steps} | **{m['total']:.0f}** | {baseline:.1f} ({ratio:.1f}x) |")


if __name__ == "__main__":
    main()
