"""Stage 3 (predict) picture: OOF MAP@5 against the threshold, over the known and new top-1 similarities."""

from __future__ import annotations

import io

import numpy as np

from tfwhale.core import files
from tfwhale.retrieval.threshold import ThresholdResult


def plot_threshold_curve(result: ThresholdResult, path: str, used: float | None = None) -> None:
    """Write a PNG: the MAP@5 curve with the chosen threshold, and under it where known and new queries
    score (their top-1 similarity histograms, with counts), so a reader sees why the threshold sits there.

    used: the threshold applied to the test queries when it differs from the tuned one (calibrated or fixed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 6), dpi=100)
    FigureCanvasAgg(figure)
    curve_axes, hist_axes = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    curve_axes.plot(result.grid, result.map_curve, color="tab:blue")
    curve_axes.axvline(result.threshold, color="tab:red", linestyle="--", label="tuned on OOF")
    if used is not None and abs(used - result.threshold) > 1e-9:
        curve_axes.axvline(used, color="tab:purple", linestyle=":", label=f"used on test ({used:.4g})")
    curve_axes.legend(loc="lower left", fontsize=8)
    curve_axes.set_title(_title(result), fontsize=9)
    curve_axes.set_ylabel("OOF MAP@5")
    curve_axes.grid(alpha=0.3)
    _histograms(hist_axes, result)
    hist_axes.axvline(result.threshold, color="tab:red", linestyle="--")
    hist_axes.set_xlabel("new_individual threshold / top-1 cosine similarity")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    files.write_bytes(path, buffer.getvalue())


def _title(result: ThresholdResult) -> str:
    auc = "" if result.separation_auc is None else f", known/new AUC {result.separation_auc:.2f}"
    title = f"threshold {result.threshold:.4g}: OOF MAP@5 {result.best_map:.4f}{auc}"
    if result.warnings:
        title += "\nWARNING: tuning unreliable (see report.json threshold.warnings)"
    return title


def _histograms(axes, result: ThresholdResult) -> None:
    top1 = np.clip(np.nan_to_num(result.top1, neginf=result.grid[0]), result.grid[0], result.grid[-1])
    bins = np.linspace(result.grid[0], result.grid[-1], 41)
    known, new = top1[~result.is_new], top1[result.is_new]
    simulated = f", {result.n_simulated} simulated" if result.n_simulated else ""
    axes.hist(known, bins=bins, alpha=0.6, color="tab:green", label=f"known: {len(known)} queries")
    axes.hist(new, bins=bins, alpha=0.6, color="tab:orange", label=f"new: {len(new)} queries{simulated}")
    axes.set_ylabel("OOF queries")
    axes.legend(loc="upper left", fontsize=8)
    axes.grid(alpha=0.3)
