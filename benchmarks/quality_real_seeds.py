"""Mean and spread over split seeds of benchmarks/quality_real.py tables (its --work/table-seed*.json).

    for s in 0 1 2 3 4; do python3 dev.py bench quality_real --photos ../shared/data/nyala-dev \\
        --species nyala --work /tmp/q-nyala --rows floors,dayone --seed $s; done
    python3 dev.py bench quality_real_seeds /tmp/q-nyala

Each cell is the mean ± the standard deviation over seeds (n-1); rows missing from a seed are averaged
over the seeds that have them (n says how many).
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

COLUMNS = [("map5", "MAP@5"), ("known", "known MAP@5"), ("top1", "known top-1 (kNN)"),
           ("new_precision", "new prec."), ("new_recall", "new recall")]  # fmt: skip


def cell(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values:
        return "-"
    spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f} ± {spread:.{digits}f}"


def read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def main(work: str) -> None:
    tables = [read(p) for p in sorted(glob.glob(os.path.join(work, "table-seed*.json")))]
    if not tables:
        raise SystemExit(f"{work}: no table-seed*.json (run benchmarks/quality_real.py with --work {work})")
    seeds = [t["seed"] for t in tables]
    titles = list(dict.fromkeys(title for t in tables for title in t["rows"]))
    print(f"{os.path.basename(os.path.normpath(tables[0]['photos']))}: split seeds {seeds}, mean ± sd")
    print("| row | n | " + " | ".join(name for _, name in COLUMNS) + " | threshold used | wall (min) |")
    print("|---|--:|" + "--:|" * (len(COLUMNS) + 2))
    for title in titles:
        rows = [t["rows"][title] for t in tables if title in t["rows"]]
        cells = [cell([r[key] for r in rows]) for key, _ in COLUMNS]
        threshold = cell([r.get("threshold") for r in rows]) if "threshold" in rows[0] else "-"
        wall = cell([r["wall"] / 60 for r in rows], 1) if "wall" in rows[0] else "-"
        print(f"| {title} | {len(rows)} | " + " | ".join(cells) + f" | {threshold} | {wall} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
