"""Stage 3 (predict): its output folder: old outputs removed first, then every file written atomically
(submission, arrays, threshold curve, examples, report.json), gallery.json last."""

from __future__ import annotations

import argparse
import dataclasses

from tfwhale.contracts.gallery_arrays import EMBEDDINGS_NAME, write_gallery_arrays
from tfwhale.contracts.gallery_manifest import (
    GalleryManifest,
    GalleryRun,
    remove_gallery_manifest,
    write_gallery_manifest,
)
from tfwhale.contracts.records import Manifest
from tfwhale.core import files
from tfwhale.core.metrics import map_at_k
from tfwhale.inference import examples, local_rerank, oof, report
from tfwhale.inference.prediction import Prediction
from tfwhale.inference.submission import SUBMISSION_NAME, gallery_arrays, write_submission
from tfwhale.inference.threshold_plot import plot_threshold_curve

CURVE_NAME = "threshold_curve.png"
EXAMPLES_NAME = "examples.png"


def remove_old_outputs(out_dir: str) -> None:
    """A rerun first removes the previous outputs, so that an interrupted rerun never leaves a mix of old
    and new files that looks current. gallery.json goes first: identify and serve read only folders that
    have it. The embedding cache stays (its entries are keyed by model and checked on reuse)."""
    remove_gallery_manifest(out_dir)
    for name in (report.REPORT_NAME, SUBMISSION_NAME, EMBEDDINGS_NAME, CURVE_NAME, EXAMPLES_NAME,
                 local_rerank.FEATURES_NAME):  # fmt: skip
        files.remove(files.join(out_dir, name))


def write_outputs(args: argparse.Namespace, manifest: Manifest, p: Prediction) -> dict:
    """Every output, each written atomically; report.json last."""
    write_submission(files.join(args.out, SUBMISSION_NAME), p.order, p.answers)
    write_gallery_arrays(args.out, gallery_arrays(p.emb, p.gallery, manifest.individuals))
    if p.outcome is not None:
        plot_threshold_curve(p.outcome.tuned, files.join(args.out, CURVE_NAME), p.policy.value)
    seed = examples.new_seed() if args.examples_seed is None else args.examples_seed
    verified = _verified_photos(p, args.examples, seed)
    rows = examples.example_rows(p, manifest, args.examples, seed, verified)
    if rows:
        examples.plot_examples(files.join(args.out, EXAMPLES_NAME), rows)
    outputs = {
        "submission": SUBMISSION_NAME,
        "embeddings": EMBEDDINGS_NAME,
        "threshold_curve": CURVE_NAME if p.outcome else None,
        "examples": EXAMPLES_NAME if rows else None,
    }
    body = report.build_report(args.out, args.solution, manifest, p, measure_variants(p, manifest), outputs)
    missed = [r.name for r in rows if r.missed]
    body["examples"] = {"seed": seed, "queries": [r.name for r in rows], "missed": missed,
                        "verified_answers": sum(v is not None for r in rows for v in r.verified)}  # fmt: skip
    body["rerank"] = p.local.report if p.local is not None else {"mode": "none"}
    report.write_report(args.out, body)
    write_gallery_manifest(args.out, gallery_manifest(args.out, manifest, p))
    return body


def _verified_photos(p: Prediction, count: int, seed: int) -> dict | None:
    """examples.png's answers' verified photos and matches, when the test queries were re-ranked by local
    features (only for the queries it shows)."""
    if p.local is None or p.local.path is None:
        return None
    shown = set(examples.pick_queries(p.order, count, seed))
    rows = [i for i, name in enumerate(p.emb.index.test_names) if name in shown]
    return examples.verified_photos(
        p.local.path,
        [p.emb.index.test_names[i] for i in rows],
        [p.local.test_features[i] for i in rows],
        [p.local.evidence[i] for i in rows],
        p.answers,
    )


def gallery_manifest(out_dir: str, manifest: Manifest, p: Prediction) -> GalleryManifest:
    """What identify and the catalogue app need to answer new photos as predict answered the test set."""
    runs = tuple(
        GalleryRun(
            r.run.run_dir, r.run.weight, r.dim, {f.model.name: f.model.run_json_sha256 for f in r.folds}
        )
        for r in p.emb.runs
    )
    local = {} if p.local is None else {
        "rerank": "local", "local": p.local.local, "embedding_threshold": p.embedding_policy,
    }  # fmt: skip
    return GalleryManifest(
        **local,
        runs=runs,
        flip_tta=p.settings.flip,
        options=dataclasses.asdict(p.settings.options),
        threshold=p.policy,
        image=manifest.image_settings,
        records_root=manifest.root,
        records_manifest_sha256=manifest.sha256,
        embeddings_file=EMBEDDINGS_NAME,
        embeddings_sha256=files.sha256(files.join(out_dir, EMBEDDINGS_NAME)),
    )


def measure_variants(p: Prediction, manifest: Manifest) -> list[dict]:
    """OOF MAP@5 of plain kNN and of each requested option alone, next to the options used, each at the
    threshold it would be used with (its own tuned one, or the fixed --threshold)."""
    if p.outcome is None:
        return []
    s = p.settings
    measured = [
        oof.measure(p.emb, variant, manifest.individuals, s.new_share, s.seed, s.threshold)
        for variant in oof.variants_to_measure(s.options)
    ]
    predictions, answers = p.outcome.predictions, p.outcome.answers
    on_oof = p.outcome.tuned.threshold if s.threshold is None else s.threshold
    chosen = oof.variant_summary(
        s.options, on_oof, map_at_k(predictions.truths, answers), report.new_rate(answers)
    )
    if p.local is not None:  # the answers above are the fused ones: say so beside the embedding variants
        chosen["name"] += " + local re-rank (fused P)"
        sample = p.local.oof_sample
        if sample is not None and sample.reranked < sample.queries:  # the rows above used every query
            chosen["name"] += f", on {sample.reranked} of {sample.queries} OOF queries"
    return [m for m in measured if m] + [{**chosen, "chosen": True}]
