"""Stage 3 (predict) outputs for people: report.json and the printed summary table (examples.py: the PNG)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from tfwhale.contracts.gallery_manifest import ThresholdPolicy
from tfwhale.contracts.records import Manifest
from tfwhale.core import files
from tfwhale.core.labels import NEW_INDIVIDUAL as NEW
from tfwhale.core.metrics import average_precision_at_k, map_at_k
from tfwhale.inference.gallery import PredictEmbeddings, RunEmbeddings
from tfwhale.inference.prediction import OOFOutcome, Prediction, Settings, species_by_individual, tuned_policy
from tfwhale.query.answers import answer_labels
from tfwhale.retrieval.threshold import ThresholdResult

logger = logging.getLogger(__name__)

REPORT_NAME = "report.json"


def map_by_group(truths: Sequence[str], predictions: Sequence[Sequence[str]], groups: Sequence[str]) -> dict:
    """MAP@5 and query count per group (e.g. species), largest groups first."""
    scores: dict[str, list[float]] = {}
    for truth, predicted, group in zip(truths, predictions, groups, strict=True):
        scores.setdefault(str(group), []).append(average_precision_at_k(truth, predicted))
    ordered = sorted(scores.items(), key=lambda item: (-len(item[1]), item[0]))
    return {
        name: {"queries": len(values), "map5": round(float(np.mean(values)), 6)} for name, values in ordered
    }


def new_rate(predictions: Sequence[Sequence[str]]) -> float:
    """Share of queries answered new_individual first."""
    return float(np.mean([bool(p) and p[0] == NEW for p in predictions])) if predictions else 0.0


def oof_section(
    truths: Sequence[str], predictions: Sequence[Sequence[str]], species: Sequence[str], folds: Sequence[int]
) -> dict:
    """OOF MAP@5 at the chosen threshold(s): overall, per species, per validation fold."""
    return {
        "queries": len(truths),
        "new_share": round(float(np.mean([t == NEW for t in truths])), 6),
        "map5": round(map_at_k(truths, predictions), 6),
        "map5_known": _map_where(truths, predictions, lambda t: t != NEW),
        "map5_new": _map_where(truths, predictions, lambda t: t == NEW),
        "new_individual_rate": round(new_rate(predictions), 6),
        "per_species": map_by_group(truths, predictions, species),
        "per_fold": map_by_group(truths, predictions, [f"fold{f}" for f in folds]),
    }


def _map_where(truths, predictions, keep) -> float | None:
    rows = [i for i, t in enumerate(truths) if keep(t)]
    if not rows:
        return None
    return round(map_at_k([truths[i] for i in rows], [predictions[i] for i in rows]), 6)


def submission_section(
    names: Sequence[str], predictions: Sequence[Sequence[str]], solution: dict[str, str] | None, solution_path
) -> dict:
    """Test-set counts, and MAP@5 against a solution (image -> individual_id) when one is given."""
    section = {"queries": len(names), "new_individual_rate": round(new_rate(predictions), 6)}
    if solution is None:
        return section
    by_name = dict(zip(names, predictions, strict=True))
    scored = sorted(solution)
    truths = [solution[n] for n in scored]
    answered = [by_name[n] for n in scored]
    section.update(
        solution=solution_path,
        scored_queries=len(scored),
        map5=round(map_at_k(truths, answered), 6),
        map5_known=_map_where(truths, answered, lambda t: t != NEW),
        map5_new=_map_where(truths, answered, lambda t: t == NEW),
    )
    return section


def _test_section(p: Prediction, solution_path: str | None) -> dict:
    """Test counts and scores, the new_individual-first rate next to the share tuning expected, and, when
    the threshold was calibrated and a solution is given, the score the uncalibrated threshold would get."""
    section = submission_section(p.order, [p.answers[n] for n in p.order], p.solution, solution_path)
    section["expected_new_share"] = p.settings.new_share
    outcome = p.outcome
    if p.solution is not None and outcome is not None and outcome.calibration is not None:
        raw_answers = answer_labels(p.ranked, tuned_policy(outcome.tuned), species_by_individual(p.emb))
        raw = dict(zip(p.emb.index.test_names, raw_answers, strict=True))
        uncalibrated = submission_section(p.order, [raw[n] for n in p.order], p.solution, solution_path)
        section["map5_uncalibrated"] = uncalibrated["map5"]
        section["new_individual_rate_uncalibrated"] = uncalibrated["new_individual_rate"]
    return section


def build_report(
    out_dir: str,
    solution_path: str | None,
    manifest: Manifest,
    p: Prediction,
    variants: list[dict],
    files: dict,
) -> dict:
    """report.json's content: what was combined how, the threshold, OOF and test scores, the files."""
    emb, settings, outcome, options = p.emb, p.settings, p.outcome, p.settings.options
    oof_answers = None
    if outcome is not None:
        predictions = outcome.predictions
        oof_answers = oof_section(
            predictions.truths, outcome.answers, predictions.species, predictions.val_folds
        )
    return {
        "out_dir": out_dir,
        "records": _records_section(manifest, emb, p.order),
        "runs": [_run_section(r) for r in emb.runs],
        "embedding_dim": int(sum(r.dim for r in emb.runs)),
        "tta": "flip" if settings.flip else "none",
        "options": {"knn": options.backend, "k": options.k, "dba": options.dba, "qe": options.qe,
                    "whiten": options.whiten, "blend": options.blend, "new_share": settings.new_share,
                    "per_species": settings.per_species},
        "threshold": _threshold_section(settings, outcome, p.policy),
        "oof": oof_answers,
        "oof_variants": variants,
        "test": _test_section(p, solution_path),
        "cache": {"reused": list(emb.reused), "computed": list(emb.computed)},
        "files": files,
        "notes": NOTES,
    }  # fmt: skip


def _records_section(manifest: Manifest, emb: PredictEmbeddings, order: Sequence[str]) -> dict:
    return {
        "root": manifest.root,
        "manifest_sha256": manifest.sha256,
        "image_size": manifest.image_size,
        "crop": manifest.data.get("crop"),  # identify crops new photos the same way
        "train": len(emb.index.train_names),
        "test": len(order),
    }


def _run_section(run_embeddings: RunEmbeddings) -> dict:
    return {
        "run_dir": run_embeddings.run.run_dir,
        "weight": run_embeddings.run.weight,
        "embedding_dim": run_embeddings.dim,
        "folds": {f.model.name: f.model.run_json_sha256 for f in run_embeddings.folds},
    }


NOTES = [
    "oof_variants: each variant's OOF MAP@5 at the threshold it would be used with (its own OOF-tuned one, "
    "or the fixed --threshold); the oof section is the options used, at the threshold used on OOF.",
    "OOF tuning: a share (threshold.new_share) of the OOF queries is made new by leaving their individual "
    "out of the gallery, so the threshold learns to say new_individual as often as a real batch needs.",
    "OOF queries are embedded by one fold model, test queries by the mean of all fold models, whose "
    "similarities run on another scale; with --calibrate the tuned threshold is carried onto the test scale "
    "(threshold.calibration).",
    "With --per-species, test queries take the species of their best-matching gallery individual; the OOF "
    "section scores OOF queries the same way.",
]


def _threshold_section(settings: Settings, outcome: OOFOutcome | None, policy: ThresholdPolicy) -> dict:
    section = {"value": policy.value, "source": policy.source}
    if outcome is None:
        return section
    tuned = outcome.tuned
    if settings.threshold is not None:
        section["oof_best"] = {"value": tuned.threshold, "map5": round(tuned.best_map, 6)}
        return {**section, **_tuning_facts(tuned)}
    return {
        **section,
        "tuned_on_oof": tuned.threshold,
        "calibration": outcome.calibration,
        "oof_map5": round(tuned.best_map, 6),
        "new_share": settings.new_share,
        **_tuning_facts(tuned),
        "per_species": policy.per_species,
        "per_species_map5": tuned.per_species_map,
        "grid": [float(tuned.grid[0]), float(tuned.grid[-1]), len(tuned.grid)],
    }


def _tuning_facts(tuned: ThresholdResult) -> dict:
    auc = tuned.separation_auc
    return {
        "oof_known": tuned.n_known,
        "oof_new": tuned.n_new,
        "oof_new_simulated": tuned.n_simulated,
        "separation_auc": None if auc is None else round(auc, 4),
        "warnings": list(tuned.warnings),
    }


def write_report(out_dir: str, report: dict) -> str:
    """report.json, written last by predict: its presence says every other output is complete."""
    path = files.join(out_dir, REPORT_NAME)
    files.write_json(path, {"status": "finished", **report})
    return path


def format_table(report: dict) -> str:
    """The summary a person reads at the end of predict."""
    lines = [f"\npredict -> {report['out_dir']}"]
    threshold = report["threshold"]
    lines.append(
        f"  embedding: {report['embedding_dim']} dims from {len(report['runs'])} run(s), tta {report['tta']}"
    )
    lines.append(f"  threshold: {threshold['value']:.4f} ({threshold['source']})")
    lines += _tuning_lines(threshold)
    for name, value in sorted(threshold.get("per_species", {}).items()):
        lines.append(f"    {name:<28} {value:.4f}")
    oof = report.get("oof")
    if oof:
        lines.append(
            f"  OOF MAP@5 {oof['map5']:.4f} over {oof['queries']} queries ({oof['new_share']:.1%} new)"
        )
        lines.append(f"    {'species':<28} {'queries':>8} {'MAP@5':>8}")
        for name, row in oof["per_species"].items():
            lines.append(f"    {name:<28} {row['queries']:>8} {row['map5']:>8.4f}")
    for variant in report.get("oof_variants", []):
        mark = " <- used" if variant.get("chosen") else ""
        lines.append(f"    variant {variant['name']:<30} MAP@5 {variant['map5']:.4f}{mark}")
    sample = report.get("rerank", {}).get("oof_queries")
    if sample:
        lines.append(f"    rerank calibrated on {sample['reranked']} of {sample['of']} OOF queries")
    for name, row in report.get("rerank", {}).get("oof", {}).items():  # --rerank local: the three rankings
        top1, auc = ("-" if row[k] is None else f"{row[k]:.3f}" for k in ("known_top1", "known_new_auc"))
        lines.append(f"    rerank {name:<7} OOF MAP@5 {row['map5']:.4f}, top-1 {top1}, known/new AUC {auc}")
    test = report["test"]
    expected = test.get("expected_new_share")
    expected_text = "" if expected is None else f" (tuned for {expected:.0%} new)"
    lines.append(
        f"  test: {test['queries']} queries, new_individual first in {test['new_individual_rate']:.1%}"
        + expected_text
    )
    if "map5" in test:
        lines.append(f"  test MAP@5 {test['map5']:.4f} over {test['scored_queries']} queries with a solution")
    if "map5_uncalibrated" in test:
        lines.append(f"    without calibration: MAP@5 {test['map5_uncalibrated']:.4f}")
    lines.append(f"  submission: {report['files']['submission']}")
    return "\n".join(lines)


def _tuning_lines(threshold: dict) -> list[str]:
    lines = []
    if "tuned_on_oof" in threshold and threshold["tuned_on_oof"] != threshold["value"]:
        tuned = threshold["tuned_on_oof"]
        lines.append(f"    tuned {tuned:.4f} on OOF, calibrated to the fold-averaged scale")
    if "oof_known" in threshold:
        auc = threshold["separation_auc"]
        lines.append(
            f"    OOF queries: {threshold['oof_known']} known, {threshold['oof_new']} new "
            f"({threshold['oof_new_simulated']} simulated); known/new top-1 ROC AUC "
            + ("n/a" if auc is None else f"{auc:.3f}")
        )
    lines += [f"    WARNING: {warning}" for warning in threshold.get("warnings", [])]
    return lines
