"""Benchmark of the catalogue's grown photos in the local re-rank's LNBNN search (not a test).

A local-feature gallery (python -m tfwhale.gallery makes one; default /tmp/week/day1, the week walk's)
and N grown photos (its own photos' features again, under new names: real descriptor counts). Timed:
sealing one index over the N grown photos (what a restart costs), adding one photo (the 1st and the 20th
after a seal: only the recent index is rebuilt; the 32nd, whose recent photos reach RECENT_PHOTOS: it
asks for a seal, which runs in a background thread; the addition's own time is what the decision
waits), the background seal's time until it is swapped in, the alternative of one index rebuilt over
gallery + grown, and one query's neighbour search (the LNBNN step of every re-rank) with the grown
indexes against the gallery's alone (the baseline, measured in the same run: its ratio), and while the
background seal runs.

    PYTHONPATH=$PWD python benchmarks/grown_index.py --gallery /tmp/week/day1 --grown 100,1000
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from tfwhale.contracts.gallery_manifest import load_gallery_manifest
from tfwhale.contracts.local_features import FeatureSet, load_feature_set
from tfwhale.core import files
from tfwhale.matching.grown import RECENT_PHOTOS
from tfwhale.matching.lnbnn import LnbnnIndex
from tfwhale.matching.rerank import LNBNN_SEARCH, LocalGallery


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f}"


def search_seconds(gallery: LocalGallery, queries: list) -> float:
    """Median seconds of one query's neighbour search."""
    times = []
    for query in queries:
        start = time.perf_counter()
        gallery.neighbours(query, LNBNN_SEARCH)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def grow(
    base: LocalGallery, names: list, picks: list, count: int, previous=None
) -> tuple[LocalGallery, float]:
    """(the gallery with the first `count` grown photos, seconds it took)."""
    owners = np.arange(len(base.features) + count) % len(base.features)
    start = time.perf_counter()
    grown = base.with_grown(
        FeatureSet.from_photos(names[:count], picks[:count]), owners, len(base.features), previous
    )
    return grown, time.perf_counter() - start


def row(base: LocalGallery, n: int, queries: list) -> str:
    """One table row: N grown photos."""
    features = base.features
    names = [f"grown-{i}" for i in range(n + RECENT_PHOTOS)]
    picks = [features[i % len(features)] for i in range(n + RECENT_PHOTOS)]
    gallery, seal = grow(base, names, picks, n)
    _, add_first = grow(base, names, picks, n + 1, gallery)
    for count in range(n + 1, n + 20):
        gallery, _ = grow(base, names, picks, count, gallery)
    gallery, add_20th = grow(base, names, picks, n + 20, gallery)
    alone, grown = search_seconds(base, queries), search_seconds(gallery, queries)
    for count in range(n + 21, n + RECENT_PHOTOS):
        gallery, _ = grow(base, names, picks, count, gallery)
    gallery, add_sealing = grow(base, names, picks, n + RECENT_PHOTOS, gallery)
    start = time.perf_counter()
    while_sealing = search_seconds(gallery, queries[:3])
    gallery.grown.settle()
    sealed = time.perf_counter() - start  # from the addition's return until the seal is swapped in
    together = FeatureSet.from_photos(
        [*features.names, *names], [features[i] for i in range(len(features))] + picks
    )
    start = time.perf_counter()
    LnbnnIndex(together)
    one_index = time.perf_counter() - start
    times = (seal, add_first, add_20th, add_sealing, sealed, one_index, alone, grown)
    return (f"| {n} | {' | '.join(ms(t) for t in times)} | {grown / alone:.2f} | "
            f"{ms(while_sealing)} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gallery", default="/tmp/week/day1", help="a gallery made with local features")
    parser.add_argument("--grown", default="10,100,1000", help="grown photo counts, comma-separated")
    parser.add_argument("--queries", type=int, default=10, help="query photos timed (10)")
    args = parser.parse_args()
    manifest = load_gallery_manifest(args.gallery)
    features = load_feature_set(files.join(args.gallery, manifest.local.features_file))
    n_base = len(features)
    base = LocalGallery(features, np.arange(n_base), n_base)
    queries = [features[i] for i in range(0, n_base, max(1, n_base // args.queries))][: args.queries]
    print(f"gallery: {n_base} photos, {len(features.descriptors)} descriptors; queries: {len(queries)}")
    print(f"| grown photos | seal all (ms) | add 1st (ms) | add 20th (ms) | add #{RECENT_PHOTOS}, asks a "
          "seal (ms) | its seal swapped in after (ms) | one index over all (ms) | search, gallery only (ms) "
          "| search with grown (ms) | x gallery only | search while sealing (ms) |")  # fmt: skip
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for n in (int(v) for v in args.grown.split(",")):
        print(row(base, n, queries), flush=True)


if __name__ == "__main__":
    main()
