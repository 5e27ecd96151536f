"""Benchmark of local-feature matching (tfwhale.matching) beside the embedding, on real photos.

Same splits, scores and table columns as benchmarks/quality_real.py, whose runs give the global rows:
run it first, one --work per seed (the rows imagenet, and lite0 where wanted), then this script adds,
per seed, SIFT only (LNBNN votes; inliers over the LNBNN top-M photos), the global top-K individuals
verified by SIFT, and calibrated fusion (isotonic P(same) of the global cosine and of the local
inliers, averaged) for each global model found. Every SIFT row is calibrated and thresholded the same
way: isotonic fit and new_individual threshold (tune_threshold, simulated new individuals, new share
0.2) on the gallery's own photos as leave-one-out queries (for a fine-tuned model: only its held-out
fold-0 photos, so the cosines are out of fold). Pair inliers are computed once per photo pair of the
whole folder (symmetric: pair (i, j) for i < j) and reused by every seed; cached under --work.

    python3 benchmarks/quality_real.py --photos ../shared/data/nyala-dev --species nyala \\
        --rows imagenet,lite0 --seed S --work /tmp/qr-nyala-sS          # for S in 0..4
    python3 benchmarks/quality_local.py --photos ../shared/data/nyala-dev --seeds 0,1,2,3,4 \\
        --global-work /tmp/qr-nyala-s{seed}
    python3 benchmarks/quality_local.py ... --study      # the parameter grid (features, pairs, K/M)
    python3 benchmarks/quality_local.py ... --timing     # per-pair / per-query time on 1 core, bytes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np
import pandas as pd
from _real_split import NEW_INDIVIDUAL, _linked_name, add_task_arguments, make_split, read_photo_folder
from PIL import Image
from quality_real import model_row, scores
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from tfwhale.contracts.local_features import FeatureSet, load_feature_set, save_feature_set
from tfwhale.core.metrics import map_at_k
from tfwhale.matching.aggregate import (
    RerankSettings,
    best_photos_of_each,
    per_individual,
    top_individual_photos,
    top_photos,
)
from tfwhale.matching.features import SiftSettings, extract_sift
from tfwhale.matching.fusion import ScoreCalibration, fit_calibration, fuse
from tfwhale.matching.lnbnn import LnbnnIndex, Neighbours, lnbnn_votes
from tfwhale.matching.pairs import PairSettings, nearest_candidates, verified_match
from tfwhale.retrieval.threshold import insert_new_individual, tune_threshold

LOOSEST_RATIO = 0.9  # candidates above it are never kept: no studied ratio reaches it
LNBNN_SEARCH = 12  # neighbours searched per descriptor; the folder's own photo and held-out ones drop out
GLOBAL_KEYS = {"imagenet": "ImageNet Lite0 untrained", "lite0": "lite0_224 fine-tuned"}


Method = RerankSettings  # the knobs the study varies, besides the features and pair settings


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add_task_arguments(
        parser, "lion", "/tmp/tfwhale-quality-local", work_help="cache of features and pair inliers"
    )
    add("--seeds", default="0", help="comma list of split seeds (0)")
    add("--new-share", type=float, default=0.2, help="share of queries of new individuals (0.2)")
    add("--global-work", default="", help="quality_real.py --work of each seed, {seed} filled in")
    add("--match-size", type=int, default=SiftSettings.match_size)
    add("--keypoints", type=int, default=SiftSettings.max_keypoints)
    add("--ratio", type=float, default=PairSettings.ratio)
    add("--geometry", default=PairSettings.geometry)
    add("--aggregation", default=Method.aggregation)
    add("--k", type=int, default=Method.shortlist_k, help="global shortlist: top-K individuals")
    add("--m", type=int, default=Method.shortlist_m, help="LNBNN shortlist: top-M photos")
    add(
        "--photos-per-individual",
        type=int,
        default=Method.photos_per_individual,
        help=f"verify only the best-voted photos of a top-K individual ({Method.photos_per_individual})",
    )
    add("--workers", type=int, default=2, help="processes for the pair inliers (2)")
    add("--study", action="store_true", help="run the parameter grid instead of the table")
    add(
        "--feature-grid",
        type=lambda t: [tuple(int(v) for v in x.split("x")) for x in t.split(",")],
        default="640x1000,384x1000,512x500,512x2000",
        help="study: SIZExKEYPOINTS settings to compare",
    )
    add("--lnbnn-only", action="store_true", help="study: features compared by LNBNN alone (no pairs)")
    add("--skip-pairs-study", action="store_true", help="study: only the method and feature grids")
    add("--timing", action="store_true", help="time pairs and queries on 1 core; feature bytes")
    return parser.parse_args()


# ---- per folder: features, all-pairs inliers, LNBNN neighbours (cached) ----


def folder_photos(root: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(paths, individual of each, the name quality_real's task gives each photo)."""
    photos = read_photo_folder(root)
    paths = [p for i in sorted(photos) for p in photos[i]]
    individuals = np.asarray([os.path.basename(os.path.dirname(p)) for p in paths])
    return paths, individuals, [_linked_name(i, p) for i, p in zip(individuals, paths, strict=True)]


def _extract(job: tuple[str, SiftSettings]):
    path, settings = job
    with threadpool_limits(1):
        return extract_sift(np.asarray(Image.open(path).convert("RGB")), settings)


def features(args, paths: list[str], settings: SiftSettings) -> FeatureSet:
    path = os.path.join(args.work, f"features-{settings.match_size}px-{settings.max_keypoints}kp.npz")
    if os.path.exists(path):
        return load_feature_set(path)
    with ProcessPoolExecutor(args.workers) as pool:
        found = list(tqdm(pool.map(_extract, [(p, settings) for p in paths], chunksize=4), total=len(paths),
                          desc=f"SIFT {settings.match_size}px {settings.max_keypoints}kp"))  # fmt: skip
    feature_set = FeatureSet.from_photos(paths, found)
    save_feature_set(path, feature_set)
    return feature_set


_POOL_FEATURES: FeatureSet | None = None


def _pair_row(job: tuple[int, tuple[PairSettings, ...]]) -> list[np.ndarray]:
    """Inliers of photo i against every j > i, one array per pair setting."""
    i, settings_list = job
    fs = _POOL_FEATURES
    out = [np.zeros(len(fs), np.int32) for _ in settings_list]
    with threadpool_limits(1):
        for j in range(i + 1, len(fs)):
            candidates = nearest_candidates(fs[i], fs[j])
            for slot, settings in enumerate(settings_list):
                found = candidates.passing(settings)
                out[slot][j] = verified_match(fs[i], fs[j], found, settings).inliers
    return out


def pair_inliers(args, fs: FeatureSet, tag: str, settings_list: list[PairSettings]) -> list[np.ndarray]:
    """Symmetric (photos, photos) inlier matrices, one per pair setting (diagonal 0), cached."""

    def name(s: PairSettings) -> str:
        return os.path.join(
            args.work, f"inliers-{tag}-r{s.ratio}-{'mut' if s.mutual else 'all'}-{s.geometry}.npy"
        )

    todo = [s for s in settings_list if not os.path.exists(name(s))]
    if todo:
        global _POOL_FEATURES
        _POOL_FEATURES = fs  # forked workers inherit it
        jobs = [(i, tuple(todo)) for i in range(len(fs))]
        matrices = [np.zeros((len(fs), len(fs)), np.int32) for _ in todo]
        with ProcessPoolExecutor(args.workers) as pool:
            for i, rows in enumerate(tqdm(pool.map(_pair_row, jobs), total=len(jobs), desc=f"pairs {tag}")):
                for matrix, row in zip(matrices, rows, strict=True):
                    matrix[i] = row
        for s, matrix in zip(todo, matrices, strict=True):
            np.save(name(s), matrix + matrix.T)
    return [np.load(name(s)) for s in settings_list]


def lnbnn_neighbours(args, fs: FeatureSet, tag: str) -> list[Neighbours]:
    """Each photo's descriptors' nearest descriptors in one index over the whole folder, cached."""
    path = os.path.join(args.work, f"lnbnn-{tag}.npz")
    if not os.path.exists(path):
        index = LnbnnIndex(fs)
        found = [index.neighbours(fs[i], LNBNN_SEARCH) for i in tqdm(range(len(fs)), desc="LNBNN")]
        np.savez(path, offsets=fs.offsets, photo=np.concatenate([f.photo for f in found]),
                 distance=np.concatenate([f.distance for f in found]))  # fmt: skip
    with np.load(path) as data:  # each data[key] reads the whole array again: read each once
        o, photo, distance = data["offsets"], data["photo"], data["distance"]
    return [Neighbours(photo[o[i] : o[i + 1]], distance[o[i] : o[i + 1]]) for i in range(len(o) - 1)]


# ---- per seed: split, global cosines, scores of every method ----


@dataclasses.dataclass
class Seed:
    """One split mapped onto the folder's photo indices."""

    gallery: np.ndarray  # photo indices
    gallery_class: np.ndarray  # class index of each gallery photo
    classes: np.ndarray  # individual names
    queries: np.ndarray  # photo indices
    truths: list[str]
    cosine: dict[str, np.ndarray]  # global model -> (photos, photos) cosine over the split's photos
    calibration_photos: dict[str, np.ndarray]  # global model -> gallery positions used as LOO queries
    global_rows: dict[str, dict]  # quality_real's row of the global model


def load_seed(args, seed: int, paths, individuals, names) -> Seed:
    split = make_split(read_photo_folder(args.photos), new_share=args.new_share, seed=seed)
    index = {p: i for i, p in enumerate(paths)}
    gallery = np.asarray([index[p] for i in sorted(split.train) for p in split.train[i]])
    classes, gallery_class = np.unique(individuals[gallery], return_inverse=True)
    queries = np.asarray([index[p] for p, _ in split.queries])
    truths = [t for _, t in split.queries]
    cosine, calibration, rows = {}, {}, {}
    work = args.global_work.format(seed=seed) if args.global_work else ""
    for key in GLOBAL_KEYS:
        result_path = os.path.join(work, "results", f"{key}.json")
        if not work or not os.path.exists(result_path):
            continue
        with open(result_path) as f:
            result = json.load(f)
        solution = pd.read_csv(
            os.path.join(work, f"task-seed{seed}-new{args.new_share}", "test_solution.csv")
        )
        rows[key] = model_row(result, solution)
        cosine[key], folds = global_cosine(result["out"], names)
        in_fold0 = folds[gallery] == 0
        calibration[key] = np.flatnonzero(in_fold0) if key != "imagenet" else np.arange(len(gallery))
    return Seed(gallery, gallery_class, classes, queries, truths, cosine, calibration, rows)


def global_cosine(out: str, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(photos, photos) cosine of predict's embeddings over the folder's photos (NaN where a photo is in
    neither the gallery nor the queries), and each photo's training fold (-1: a query)."""
    data = np.load(os.path.join(out, "embeddings.npz"))
    where = {n: i for i, n in enumerate(names)}
    vectors = np.full((len(names), data["train"].shape[1]), np.nan, np.float32)
    folds = np.full(len(names), -1, np.int64)
    for part, names_key in (("train", "train_names"), ("test", "test_names")):
        rows = [where[n] for n in data[names_key].tolist()]
        emb = data[part] / np.linalg.norm(data[part], axis=1, keepdims=True)
        vectors[rows] = emb
        if part == "train":
            folds[rows] = data["train_folds"]
    return vectors @ vectors.T, folds


def local_evidence(seed: Seed, query_photos: np.ndarray, inliers: np.ndarray, neighbours, method: Method,
                   leave_out_self: bool) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(votes, inliers) of the queries against the gallery photos, (queries, gallery) each; a query that
    is itself a gallery photo (leave_out_self) never meets itself."""
    n_photos = len(inliers)
    in_gallery = np.zeros(n_photos, bool)
    in_gallery[seed.gallery] = True
    votes = np.zeros((len(query_photos), len(seed.gallery)))
    for row, q in enumerate(query_photos):
        allowed = in_gallery.copy()
        allowed[q] = False  # the photo's own descriptors are its nearest neighbours
        votes[row] = lnbnn_votes(neighbours[q], n_photos, method.lnbnn_k, allowed)[seed.gallery]
    pair = inliers[np.ix_(query_photos, seed.gallery)].astype(np.float64)
    if leave_out_self:
        pair[seed.gallery[None, :] == query_photos[:, None]] = 0.0
    return votes, pair


def method_scores(seed: Seed, votes, pair, cosine, method: Method, self_mask) -> dict[str, np.ndarray]:
    """Raw per-individual scores (queries, classes) of every method; self_mask: (queries, gallery) True
    where the gallery photo is the query itself (never a candidate)."""
    n, agg = len(seed.classes), method.aggregation
    lnbnn = per_individual(votes, seed.gallery_class, n, agg)
    scaled = lnbnn / max(lnbnn.max(), 1e-9)
    by_votes = np.stack(
        [
            top_photos(np.where(s, -np.inf, v), method.shortlist_m)
            for v, s in zip(votes, self_mask, strict=True)
        ]
    )
    out = {
        "lnbnn": lnbnn,
        "verified": per_individual(pair * by_votes, seed.gallery_class, n, agg) + 1e-3 * scaled,
    }
    if cosine is not None:
        cos = np.where(self_mask, -np.inf, cosine)
        best = per_individual(cos, seed.gallery_class, n, "max")
        best[~np.isfinite(best)] = -1.0
        by_cos = np.stack([top_individual_photos(b, seed.gallery_class, method.shortlist_k) for b in best])
        if method.photos_per_individual:  # of each shortlisted individual, only its best-voted photos
            n_best = method.photos_per_individual
            by_cos &= np.stack([best_photos_of_each(v, seed.gallery_class, n_best) for v in votes])
        out["global"] = best
        out["global_verified"] = per_individual(pair * by_cos, seed.gallery_class, n, agg) + 1e-3 * best
        out["local_union"] = per_individual(pair * (by_cos | by_votes), seed.gallery_class, n, agg)
    return out


def leave_one_out(seed: Seed, inliers, neighbours, method: Method, key: str | None):
    """Raw scores of the gallery's own photos as queries (those of calibration_photos[key]), their
    truths (class index, -1 when no other photo of theirs is left) and the cosine."""
    positions = seed.calibration_photos[key] if key else np.arange(len(seed.gallery))
    photos = seed.gallery[positions]
    votes, pair = local_evidence(seed, photos, inliers, neighbours, method, leave_out_self=True)
    self_mask = seed.gallery[None, :] == photos[:, None]
    cosine = seed.cosine[key][np.ix_(photos, seed.gallery)] if key else None
    raw = method_scores(seed, votes, pair, cosine, method, self_mask)
    counts = np.bincount(seed.gallery_class, minlength=len(seed.classes))
    own = seed.gallery_class[positions]
    return raw, own, counts[own] > 1


def calibrate(raw: np.ndarray, own: np.ndarray, has_others: np.ndarray) -> ScoreCalibration:
    """Isotonic P(same) of per-individual scores over LOO pairs; the query's own individual is left out
    when none of its other photos is left (no photo, no pair)."""
    own_column = np.arange(raw.shape[1])[None, :] == own[:, None]
    usable = ~(own_column & ~has_others[:, None])
    return fit_calibration(raw[usable], own_column[usable])


def rank(prob: np.ndarray, order_key: np.ndarray, classes: np.ndarray, drop: np.ndarray | None = None):
    """(labels, probabilities) per query, ranked by order_key; `drop` (class per query, -1 none) removes
    a class from a query's candidates (its individual, for a simulated new one)."""
    labels, probs = [], []
    for q in range(len(prob)):
        order = np.argsort(-order_key[q], kind="stable")
        if drop is not None and drop[q] >= 0:
            order = order[order != drop[q]]
        order = order[:20]
        labels.append(classes[order].tolist())
        probs.append(prob[q, order].tolist())
    return labels, probs


def tuned_threshold(prob, order_key, own, has_others, classes, new_share: float) -> float:
    """new_individual threshold on LOO queries: each as known (where possible) and as simulated new
    (its individual dropped from the candidates)."""
    labels_k, probs_k = rank(prob[has_others], order_key[has_others], classes)
    labels_n, probs_n = rank(prob, order_key, classes, drop=own)
    truths = [classes[t] for t in own[has_others]] + [NEW_INDIVIDUAL] * len(own)
    grid = np.round(np.arange(0.0, 1.0001, 0.01), 4)
    return tune_threshold(
        labels_k + labels_n, probs_k + probs_n, truths, grid=grid, new_share=new_share
    ).threshold


def evaluate(labels, probs, truths, threshold: float) -> dict:
    answers = insert_new_individual(labels, probs, threshold)
    row = scores(truths, answers)
    known = [i for i, t in enumerate(truths) if t != NEW_INDIVIDUAL]
    row["top1"] = float(np.mean([labels[i][0] == truths[i] for i in known]))
    grid = np.round(np.arange(0.0, 1.0001, 0.01), 4)
    swept = [map_at_k(truths, insert_new_individual(labels, probs, float(t))) for t in grid]
    row.update(threshold=threshold, best_threshold=float(grid[int(np.argmax(swept))]), best_map5=max(swept))
    return row


ROW_TITLES = {
    "lnbnn": "SIFT only: LNBNN votes",
    "verified": "SIFT only: inliers over LNBNN top-M photos",
    "global_verified": "{g}: top-K individuals verified by SIFT",
    "fused": "{g} + SIFT, calibrated fusion",
    "fused_votes": "{g} + SIFT inliers + LNBNN votes, calibrated fusion",
}


def seed_rows(args, seed: Seed, inliers, neighbours, method: Method) -> dict[str, dict]:
    votes, pair = local_evidence(seed, seed.queries, inliers, neighbours, method, leave_out_self=False)
    no_self = np.zeros_like(pair, bool)
    table = {}
    keys = list(seed.cosine) or [None]
    for key in keys:
        g = GLOBAL_KEYS.get(key, "")
        cosine = seed.cosine[key][np.ix_(seed.queries, seed.gallery)] if key else None
        raw = method_scores(seed, votes, pair, cosine, method, no_self)
        loo, own, has_others = leave_one_out(seed, inliers, neighbours, method, key)
        if key:
            table[f"{g}: global only (quality_real)"] = seed.global_rows[key]
            p_global = calibrate(loo["global"], own, has_others)
            p_local = calibrate(loo["local_union"], own, has_others)
            p_votes = calibrate(loo["lnbnn"], own, has_others)
            for scores_ in (raw, loo):
                probabilities = (p_global(scores_["global"]), p_local(scores_["local_union"]))
                scores_["fused"] = fuse(*probabilities)
                scores_["fused_votes"] = fuse(*probabilities, p_votes(scores_["lnbnn"]))
        for name, title in ROW_TITLES.items():
            if name not in raw or (name in ("lnbnn", "verified") and key != keys[0]):
                continue
            fused = name.startswith("fused")
            cal = (lambda x: x) if fused else calibrate(loo[name], own, has_others)
            order_key = raw[name] + (1e-6 * raw["global"] if fused else 0.0)
            loo_key = loo[name] + (1e-6 * loo["global"] if fused else 0.0)
            threshold = tuned_threshold(
                cal(loo[name]), loo_key, own, has_others, seed.classes, args.new_share
            )
            labels, probs = rank(cal(raw[name]), order_key, seed.classes)
            table[title.format(g=g)] = evaluate(labels, probs, seed.truths, threshold)
    return table


# ---- the table over seeds ----


def summarise(per_seed: list[dict[str, dict]]) -> str:
    """Markdown table: mean +- standard deviation over seeds of every column, per row."""
    columns = [("map5", "MAP@5"), ("known", "known MAP@5"), ("top1", "known top-1"), ("new_precision",
               "new prec."), ("new_recall", "new recall"), ("best_map5", "MAP@5 best thr.")]  # fmt: skip
    lines = ["| row | " + " | ".join(c for _, c in columns) + " |", "|---|" + "--:|" * len(columns)]
    for title in per_seed[0]:
        cells = []
        for key, _ in columns:
            values = np.asarray([t[title][key] for t in per_seed if title in t], np.float64)
            cells.append(f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + per_seed_table(per_seed)


def per_seed_table(per_seed: list[dict[str, dict]]) -> str:
    """MAP@5 / known top-1 of every row on every seed (blank: the row's global model did not run)."""
    lines = ["| row | " + " | ".join(f"seed {i}" for i in range(len(per_seed))) + " |",
             "|---|" + "--:|" * len(per_seed)]  # fmt: skip
    for title in per_seed[0]:
        cells = [f"{t[title]['map5']:.3f} / {t[title]['top1']:.3f}" if title in t else "" for t in per_seed]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_from(args) -> tuple[SiftSettings, PairSettings, Method]:
    return (
        SiftSettings(match_size=args.match_size, max_keypoints=args.keypoints),
        PairSettings(ratio=args.ratio, geometry=args.geometry),
        Method(
            aggregation=args.aggregation,
            shortlist_k=args.k,
            shortlist_m=args.m,
            photos_per_individual=args.photos_per_individual,
        ),
    )


def run_table(args, seeds, sift: SiftSettings, pairs: PairSettings, method: Method, folder) -> list[dict]:
    paths, individuals, names = folder
    fs = features(args, paths, sift)
    tag = f"{sift.match_size}px-{sift.max_keypoints}kp"
    (inliers,) = pair_inliers(args, fs, tag, [pairs])
    neighbours = lnbnn_neighbours(args, fs, tag)
    return [
        seed_rows(args, load_seed(args, s, paths, individuals, names), inliers, neighbours, method)
        for s in seeds
    ]


def main() -> None:
    args = parse_args()
    os.makedirs(args.work, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    folder = folder_photos(args.photos)
    sift, pairs, method = settings_from(args)
    if args.timing:
        timing(args, folder, sift, pairs, method)
        return
    if args.study:
        study(args, seeds, folder, sift, pairs, method)
        return
    per_seed = run_table(args, seeds, sift, pairs, method, folder)
    header = (f"{os.path.basename(os.path.normpath(args.photos))}: seeds {args.seeds}; SIFT "
              f"{sift.match_size} px, {sift.max_keypoints} keypoints; ratio {pairs.ratio}, {pairs.geometry}; "
              f"{method}")  # fmt: skip
    text = header + "\n\n" + summarise(per_seed)
    print(text)
    with open(os.path.join(args.work, "table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.work, "table.json"), "w") as f:
        json.dump(per_seed, f, indent=1)


# ---- the parameter study (means over seeds of the rows that decide) ----

STUDY_ROWS = ("lnbnn", "verified", "global_verified", "fused", "fused_votes")


def study_line(label: str, per_seed: list[dict], rows: tuple[str, ...] = STUDY_ROWS) -> str:
    """MAP@5 and known top-1 (means over seeds) of the rows that decide, the global model untrained;
    rows not in `rows` are left blank."""
    cells = []
    for name in STUDY_ROWS:
        title = ROW_TITLES[name].format(g=GLOBAL_KEYS["imagenet"])
        if title not in per_seed[0] or name not in rows:
            cells.append("- | -")
            continue
        map5 = np.mean([t[title]["map5"] for t in per_seed])
        cells.append(f"{map5:.3f} | {np.mean([t[title]['top1'] for t in per_seed]):.3f}")
    return f"| {label} | " + " | ".join(cells) + " |"


def study_pairs_and_method(args, fs, tag, grid, line, pairs, method) -> np.ndarray:
    """The pair settings' lines, then aggregation x K x M on the default pairs; their inliers."""
    matrices = pair_inliers(args, fs, tag, grid)
    for p, inliers in zip(grid, matrices if not args.skip_pairs_study else [], strict=False):
        line(
            f"ratio {p.ratio}, {p.geometry}{'' if p.mutual else ', no mutual check'}",
            tag,
            fs,
            p,
            inliers,
            method,
        )
    base = matrices[0]
    for agg in ("max", "sum"):
        for k in (5, 10, 20):
            for m in (10, 30, 60):
                m_ = dataclasses.replace(method, aggregation=agg, shortlist_k=k, shortlist_m=m)
                line(f"{agg}, K={k}, M={m}", tag, fs, pairs, base, m_)
    return base


def study(args, seeds, folder, sift: SiftSettings, pairs: PairSettings, method: Method) -> None:
    """Vary one thing at a time from the defaults; each line prints as soon as it is measured."""
    heads = ["LNBNN", "LNBNN top-M verified", "global top-K verified", "fused", "fused + votes"]
    print("| setting | " + " | ".join(f"{h} MAP@5 | top-1" for h in heads) + " |\n|---|"
          + "--:|" * 2 * len(heads), flush=True)  # fmt: skip
    paths, individuals, names = folder
    loaded = []

    def line(label, fs_tag, fs, pair_settings, inliers, m):
        neighbours = lnbnn_neighbours(args, fs, fs_tag)
        if not loaded:  # after the first inliers: quality_real's global runs may finish meanwhile
            loaded.extend(load_seed(args, s, paths, individuals, names) for s in seeds)
        per_seed = [seed_rows(args, seed, inliers, neighbours, m) for seed in loaded]
        print(study_line(label, per_seed), flush=True)

    fs, tag = features(args, paths, sift), f"{sift.match_size}px-{sift.max_keypoints}kp"
    grid = [pairs] + [dataclasses.replace(pairs, ratio=r) for r in (0.7, 0.9) if r != pairs.ratio]
    grid += [dataclasses.replace(pairs, geometry=g) for g in ("affine", "similarity", "fundamental")
             if g != pairs.geometry] + [dataclasses.replace(pairs, mutual=False)]  # fmt: skip
    if args.lnbnn_only:
        base = np.zeros((len(fs), len(fs)), np.int32)
        if not loaded:
            loaded.extend(load_seed(args, s, paths, individuals, names) for s in seeds)
    else:
        base = study_pairs_and_method(args, fs, tag, grid, line, pairs, method)
    for size, kp in args.feature_grid:
        other = dataclasses.replace(sift, match_size=size, max_keypoints=kp)
        fs, tag = features(args, paths, other), f"{size}px-{kp}kp"
        if args.lnbnn_only:  # no pair inliers: only the LNBNN row means anything
            neighbours = lnbnn_neighbours(args, fs, tag)
            per_seed = [seed_rows(args, seed, np.zeros_like(base), neighbours, method) for seed in loaded]
            print(study_line(f"{size} px, {kp} keypoints (LNBNN only)", per_seed, ("lnbnn",)), flush=True)
            continue
        (inliers,) = pair_inliers(args, fs, tag, [pairs])
        line(f"{size} px, {kp} keypoints", tag, fs, pairs, inliers, method)


# ---- time and bytes ----


def timing(args, folder, sift: SiftSettings, pairs: PairSettings, method: Method) -> None:
    """Per photo extraction, per pair and per query (global top-K individuals' photos verified, plus
    one LNBNN search over the whole folder) on one core; bytes per photo."""
    paths, individuals, _ = folder
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    sample = rng.choice(len(paths), size=min(40, len(paths)), replace=False)
    with threadpool_limits(1):
        start = time.perf_counter()
        found = [extract_sift(np.asarray(Image.open(paths[i]).convert("RGB")), sift) for i in sample]
        extract_s = (time.perf_counter() - start) / len(sample)
        start = time.perf_counter()
        n_pairs = 0
        for a in found[:20]:
            for b in found[20:]:
                verified_match(a, b, nearest_candidates(a, b).passing(pairs), pairs)
                n_pairs += 1
        pair_s = (time.perf_counter() - start) / n_pairs
        fs = features(args, paths, sift)
        start = time.perf_counter()
        index = LnbnnIndex(fs)
        index_s = time.perf_counter() - start
        start = time.perf_counter()
        for q in found[:10]:
            lnbnn_votes(index.neighbours(q, LNBNN_SEARCH), len(fs), method.lnbnn_k)
        lnbnn_s = (time.perf_counter() - start) / 10
    per_individual_photos = len(paths) / len(set(individuals))
    verified_each = min(per_individual_photos, method.photos_per_individual or per_individual_photos)
    k_pairs = method.shortlist_k * verified_each + method.shortlist_m  # at most: the shortlists overlap
    kp = np.diff(fs.offsets)
    per_photo = (fs.keypoints.nbytes + fs.descriptors.nbytes) / len(fs)
    file_bytes = os.path.getsize(
        os.path.join(args.work, f"features-{sift.match_size}px-{sift.max_keypoints}kp.npz")
    )
    lines = [
        f"SIFT {sift.match_size} px {sift.max_keypoints} kp, ratio {pairs.ratio} {pairs.geometry}, 1 core:",
        f"- extraction {extract_s * 1000:.0f} ms a photo; keypoints a photo: mean {kp.mean():.0f}, median "
        f"{np.median(kp):.0f}",
        f"- one pair (ratio + mutual + {pairs.geometry}) {pair_s * 1000:.1f} ms",
        f"- a query at K={method.shortlist_k} x {verified_each:.1f} photos + M={method.shortlist_m} (<= "
        f"{k_pairs:.0f} pairs; {per_individual_photos:.1f} photos an individual): "
        f"{k_pairs * pair_s * 1000:.0f} ms",
        f"- LNBNN: index of {len(fs)} photos built in {index_s:.2f} s, one query {lnbnn_s * 1000:.0f} ms",
        f"- bytes a photo: {per_photo:.0f} in memory, {file_bytes / len(fs):.0f} in the file; 79,000 "
        f"photos: {79_000 * file_bytes / len(fs) / 2**30:.2f} GiB",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
