"""Benchmark of the predict stage's kNN search (prints markdown tables; not a test).

Part 1, Happywhale scale (51,033 gallery x 27,956 queries x 512 dims, random unit float32):
tfwhale's exact search vs sklearn NearestNeighbors(metric="cosine", brute) vs the GEMM floor, the
same 2*G*Q*D flops run as plain 4096-row matmuls without any top-k. Floor and search alternate
for --repeats rounds, so a machine shared with other work slows both alike.

Part 2 (needs faiss): a 1,000,000-vector gallery with cluster structure like real embeddings
(species centres -> individual centres -> 15 noisy photos each; random vectors are the worst case
for approximate search), queries = new photos of known individuals: tfwhale exact vs faiss exact
vs an IVF index at several settings, recall@5 against exact, and time per query.

    python benchmarks/knn_search.py            # full run, ~6 minutes on 2 cores
    python benchmarks/knn_search.py --quick    # small sizes, ~20 seconds
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable

import numpy as np

from tfwhale.retrieval import knn

# OpenBLAS's threads spin for ~0.1 s after a multi-threaded GEMM: without a pause, whatever runs
# next shares the cores with them (measured: +30-80 ms on the --quick search right after the floor)
PAUSE_S = 0.5
IVF_SETTINGS = (
    "nprobe=16,k_factor_rf=2;nprobe=32,k_factor_rf=1;nprobe=32,k_factor_rf=2;nprobe=64,k_factor_rf=2"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="small sizes for a fast check")
    add("--gallery", type=int, default=51_033)
    add("--queries", type=int, default=27_956)
    add("--dim", type=int, default=512)
    add("--k", type=int, default=50)
    add("--repeats", type=int, default=3, help="alternating rounds of floor and exact search")
    add("--memory-budget", type=int, default=knn.DEFAULT_MEMORY_BUDGET >> 20, help="MiB of similarities")
    add("--skip-exact", action="store_true", help="skip part 1")
    add("--skip-sklearn", action="store_true")
    add("--skip-faiss", action="store_true", help="skip part 2")
    add("--skip-faiss-flat", action="store_true", help="skip timing faiss IndexFlatIP")
    add("--faiss-gallery", type=int, default=1_000_000)
    add("--faiss-queries", type=int, default=1_000)
    add("--photos-per-individual", type=int, default=15)
    add("--species", type=int, default=30, help="0: individual centres fully random")
    add("--spread", type=float, default=1.0, help="individual centre's offset from its species centre")
    add("--noise", type=float, default=0.75, help="photo's offset from its individual centre")
    add("--nlist", type=int, default=1024)
    add("--faiss-spec", default="IVF{nlist},PQ64x4fs,RFlat", help="faiss.index_factory string")
    add("--faiss-settings", default=IVF_SETTINGS, help="';'-separated faiss.ParameterSpace strings")
    add("--train-per-list", type=int, default=64, help="IVF training rows per list")
    add("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.gallery, args.queries, args.repeats = 10_000, 4_000, 2
        args.faiss_gallery, args.faiss_queries, args.nlist = 100_000, 500, 256
        args.faiss_settings = "nprobe=8,k_factor_rf=2;nprobe=16,k_factor_rf=2"
    return args


def random_unit(rng: np.random.Generator, n: int, dim: int, step: int = 65_536) -> np.ndarray:
    """Unit vectors made a slice at a time, so generating them never needs more than the result."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, step):
        block = rng.standard_normal((min(step, n - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def around(rng: np.random.Generator, centres: np.ndarray, ids: np.ndarray, offset: float) -> np.ndarray:
    """normalise(centres[ids] + offset * a random unit vector): cosine to the centre ~1/sqrt(1 + offset^2)."""
    out = np.empty((len(ids), centres.shape[1]), np.float32)
    for start in range(0, len(ids), 65_536):
        rows = ids[start : start + 65_536]
        moved = centres[rows] + offset * random_unit(rng, len(rows), centres.shape[1])
        out[start : start + len(rows)] = moved / np.linalg.norm(moved, axis=1, keepdims=True)
    return out


def clustered(args: argparse.Namespace, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """(gallery, queries, number of individuals); gallery row i shows individual i % n_individuals."""
    n_individuals = -(-args.faiss_gallery // args.photos_per_individual)
    if args.species:
        species = random_unit(rng, args.species, args.dim)
        centres = around(rng, species, rng.integers(0, args.species, n_individuals), args.spread)
    else:
        centres = random_unit(rng, n_individuals, args.dim)
    gallery = around(rng, centres, np.arange(args.faiss_gallery) % n_individuals, args.noise)
    queries = around(rng, centres, rng.integers(0, n_individuals, args.faiss_queries), args.noise)
    return gallery, queries, n_individuals


def similarity_profile(gallery: np.ndarray, n_individuals: int, rng: np.random.Generator) -> str:
    """Mean cosine of 2,000 sampled same-individual photo pairs and of 2,000 random pairs."""
    first = rng.integers(0, len(gallery) - n_individuals, 2000)
    same = np.einsum("ij,ij->i", gallery[first], gallery[first + n_individuals])
    other = np.einsum("ij,ij->i", gallery[first], gallery[rng.integers(0, len(gallery), 2000)])
    return (
        f"same individual {same.mean():.2f} +- {same.std():.2f}, "
        f"random pairs {other.mean():.2f} +- {other.std():.2f}"
    )


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds over all threads, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def gemm_pass(queries: np.ndarray, gallery: np.ndarray, rows: int = 4096) -> None:
    """The floor: the search's GEMM alone, every query against the gallery in 4096-row matmuls."""
    out = np.empty((min(rows, len(queries)), len(gallery)), np.float32)
    for start in range(0, len(queries), rows):
        chunk = queries[start : start + rows]
        np.matmul(chunk, gallery.T, out=out[: len(chunk)])


def exact_vs_floor(args: argparse.Namespace, rng: np.random.Generator) -> None:
    gallery = random_unit(rng, args.gallery, args.dim)
    queries = random_unit(rng, args.queries, args.dim)
    budget = args.memory_budget << 20

    def search(backend: knn.Backend = "exact") -> tuple[np.ndarray, np.ndarray]:
        return knn.search(queries, gallery, k=args.k, backend=backend, memory_budget=budget)

    rss_data = peak_rss_mb()
    sims, idx = search()  # a warm-up, measured before the floor's larger buffer exists
    rss_search = peak_rss_mb()
    floors, runs = [], []
    for _ in range(args.repeats):
        floors.append(timed(lambda: gemm_pass(queries, gallery))[:2])
        time.sleep(PAUSE_S)
        runs.append(timed(search)[:2])
        time.sleep(PAUSE_S)
    floors, runs = np.array(floors), np.array(runs)
    flops = 2.0 * args.gallery * args.queries * args.dim
    _, rows, workers = knn._plan(args.gallery, 4096, budget, knn._n_threads())
    print(
        f"\n## Exact search: gallery {args.gallery:,} x queries {args.queries:,} x dim {args.dim}, k={args.k}"
    )
    print(f"floor: {flops / 1e12:.3f} TFLOP, best {flops / floors[:, 0].min() / 1e9:.0f} GFLOP/s wall")
    print(
        f"tfwhale exact: {rows}-query chunks over {workers} workers (budget {args.memory_budget} MiB); "
        f"peak RSS {rss_data:.0f} MiB "
        f"with the data, {rss_search:.0f} MiB after searching (+{rss_search - rss_data:.0f} MiB)"
    )
    paired = runs[:, 0] / floors[:, 0]
    print(
        "rounds (floor s, exact s, ratio): "
        + ", ".join(
            f"({f:.2f}, {r:.2f}, {p:.3f})" for f, r, p in zip(floors[:, 0], runs[:, 0], paired, strict=True)
        )
    )
    table = [
        ("GEMM floor (best round)", *floors.min(axis=0)),
        ("tfwhale exact (best round)", *runs.min(axis=0)),
    ]
    if not args.skip_sklearn:
        wall, cpu, (sk_sims, sk_idx) = timed(lambda: search("sklearn"))
        table.append(("sklearn NearestNeighbors cosine brute", wall, cpu))
        print(
            f"sklearn vs exact: same neighbour id at {np.mean(sk_idx == idx):.4%} of [query, rank] places, "
            f"max |sim difference| {np.abs(sk_sims - sims).max():.1e}; peak RSS then {peak_rss_mb():.0f} MiB"
        )
    floor_wall, floor_cpu = table[0][1], table[0][2]
    print_table(
        ["method", "wall s", "x floor", "CPU s", "x floor (CPU)"],
        [
            [name, f"{wall:.2f}", f"{wall / floor_wall:.3f}", f"{cpu:.2f}", f"{cpu / floor_cpu:.3f}"]
            for name, wall, cpu in table
        ],
    )
    print(f"median of the per-round ratios exact / floor: {np.median(paired):.3f}")


def recall_at(found: np.ndarray, truth: np.ndarray, n: int = 5) -> float:
    """Share of the exact top-n that the approximate top-n also holds."""
    hits = [len(set(a[:n]) & set(b[:n])) for a, b in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / n


def approximate_search(args: argparse.Namespace, rng: np.random.Generator) -> None:
    try:
        import faiss
    except ImportError:
        print("\n(faiss is not installed: pip install tfwhale[faiss] for part 2)")
        return
    gallery, queries, n_individuals = clustered(args, rng)
    n_queries = len(queries)
    print(
        f"\n## Approximate search (faiss {faiss.__version__}): gallery {len(gallery):,} x dim {args.dim}, "
        f"{n_queries:,} queries, k={args.k}"
    )
    print(
        f"clustered gallery: {args.species} species -> {n_individuals:,} individuals (spread "
        f"{args.spread}) -> {args.photos_per_individual} photos each (noise {args.noise}); queries: new "
        f"photos of known individuals; cosine: {similarity_profile(gallery, n_individuals, rng)}"
    )

    def search(index=None) -> tuple[np.ndarray, np.ndarray]:
        backend = "exact" if index is None else "faiss"
        return knn.search(queries, gallery, k=args.k, backend=backend, faiss_index=index)

    exact_wall, exact_cpu, (_, truth) = timed(search)
    again = timed(search)  # best of two: the reference for every speed-up
    exact_wall, exact_cpu = min(exact_wall, again[0]), min(exact_cpu, again[1])
    rows = [("tfwhale exact (best of 2)", exact_wall, exact_cpu, 1.0)]
    if not args.skip_faiss_flat:
        flat = knn.build_faiss_index(gallery, "Flat")
        wall, cpu, (_, found) = timed(lambda: search(flat))
        rows.append(("faiss IndexFlatIP (exact)", wall, cpu, recall_at(found, truth)))
        del flat
    spec = args.faiss_spec.format(nlist=args.nlist)
    train_size = args.train_per_list * args.nlist
    build_wall, build_cpu, index = timed(lambda: knn.build_faiss_index(gallery, spec, train_size=train_size))
    for setting in args.faiss_settings.split(";"):
        faiss.ParameterSpace().set_index_parameters(index, setting)
        wall, cpu, (_, found) = timed(lambda: search(index))
        rows.append((f"faiss {spec} {setting}", wall, cpu, recall_at(found, truth)))
    print(
        f"{spec} build (train on {train_size:,} rows, add all): {build_wall:.1f} s wall, "
        f"{build_cpu:.1f} CPU s; peak RSS {peak_rss_mb():.0f} MiB"
    )
    print_table(
        ["method", "wall s", "ms / query", "speed-up (wall)", "CPU s", "speed-up (CPU)", "recall@5"],
        [
            [
                name,
                f"{wall:.2f}",
                f"{1e3 * wall / n_queries:.3f}",
                f"{exact_wall / wall:.1f}x",
                f"{cpu:.2f}",
                f"{exact_cpu / cpu:.1f}x",
                f"{recall:.4f}",
            ]
            for name, wall, cpu, recall in rows
        ],
    )


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"numpy {np.__version__}; {knn._n_threads()} CPU threads; load average {os.getloadavg()[0]:.2f}")
    if not args.skip_exact:
        exact_vs_floor(args, rng)
    if not args.skip_faiss:
        approximate_search(args, rng)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (other processes share the cores)")


if __name__ == "__main__":
    main()
