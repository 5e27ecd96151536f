"""Stage 3 (predict) examples.png: test queries drawn at random (seeded), each with its answers' photos.

A missed query (its truth known from --solution, the top answer wrong) also shows the true individual's
closest gallery photo beside it, so a person sees what the model confused with what. With the local
re-rank's evidence (VerifiedPhoto per query and answer), an answer shows its best verified photo instead,
beside the query with the verified matches drawn as lines (match_pictures.draw_matches, as identify
--explain draws them).
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tfwhale.contracts import records
from tfwhale.contracts.local_features import LocalFeatures
from tfwhale.contracts.records import Manifest
from tfwhale.core import files
from tfwhale.inference.match_pictures import draw_matches
from tfwhale.inference.prediction import Prediction
from tfwhale.matching.pairs import PairMatch
from tfwhale.matching.rerank import Evidence
from tfwhale.query.local import LocalRerankPath
from tfwhale.retrieval.threshold import NEW


@dataclass(frozen=True)
class VerifiedPhoto:
    """An answer's best verified gallery photo for one query (the local re-rank's evidence): its name, the
    inlier matches, and the (width, height) of the two matching images the match positions are in."""

    photo: str
    match: PairMatch
    query_size: tuple[int, int]
    photo_size: tuple[int, int]


@dataclass(frozen=True)
class ExampleRow:
    """One query of the examples PNG and its answers (label, score, gallery image or None for new)."""

    name: str
    image: np.ndarray | None
    truth: str | None
    answers: list[tuple[str, float | None, np.ndarray | None]]
    truth_image: np.ndarray | None = None  # missed queries: the true individual's closest gallery photo
    truth_score: float | None = None
    verified: tuple[VerifiedPhoto | None, ...] = ()  # per answer, when the gallery re-ranks by local features

    def answer_image(self, index: int) -> np.ndarray | None:
        """What an answer's tile shows: its photo, or the query beside it with the verified matches."""
        image = self.answers[index][2]
        found = self.verified[index] if index < len(self.verified) else None
        if found is None or image is None or self.image is None:
            return image
        return draw_matches(self.image, found.query_size, image, found.photo_size, found.match)

    @property
    def missed(self) -> bool:
        return self.truth is not None and bool(self.answers) and self.answers[0][0] != self.truth


def new_seed() -> int:
    """A fresh seed for a run that names none (it goes into report.json, so the draw can be repeated)."""
    return secrets.randbelow(2**31)


def pick_queries(order: Sequence[str], count: int, seed: int) -> list[str]:
    """`count` distinct test queries drawn at random with `seed`, in submission order."""
    if count <= 0 or not order:
        return []
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(order), size=min(count, len(order)), replace=False))
    return [order[i] for i in picks]


def verified_photos(
    local: LocalRerankPath,
    queries: Sequence[str],
    features: Sequence[LocalFeatures],
    evidence: Sequence[Evidence],
    answers: Mapping[str, Sequence[str]],
) -> dict[tuple[str, str], VerifiedPhoto]:
    """(query, answer label) -> the answer's best verified photo, from the local re-rank of the queries
    (their features and Reranked.evidence, in the same order): what example_rows draws matches from."""
    row_of = {name: row for row, name in enumerate(local.gallery.features.names)}
    out = {}
    for query, found, proof in zip(queries, features, evidence, strict=True):
        for label in answers.get(query, ()):
            best = local.best_photo(proof, label)
            if best is not None:
                photo, match = best
                size = tuple(int(v) for v in local.gallery.features.image_sizes[row_of[photo]])
                out[query, label] = VerifiedPhoto(photo, match, found.image_size, size)
    return out


def example_rows(
    p: Prediction,
    manifest: Manifest,
    count: int,
    seed: int,
    verified: Mapping[tuple[str, str], VerifiedPhoto] | None = None,
) -> list[ExampleRow]:
    """Random test queries (seeded), each answer shown with its individual's closest gallery photo, or
    with its best verified photo and the matches where `verified` has one for (query, answer label)."""
    chosen = pick_queries(p.order, count, seed)
    if not chosen:
        return []
    verified = verified or {}
    truths = {name: (p.solution or {}).get(name) for name in chosen}
    position = {name: i for i, name in enumerate(p.emb.index.test_names)}
    closest, truth_sims = _closest_gallery_photos(p, chosen, position, truths)
    closest.update({key: found.photo for key, found in verified.items() if key[0] in truths})
    queries = fetch_images(manifest, "test", set(chosen))
    thumbnails = fetch_images(manifest, "train", set(closest.values()))
    rows = []
    for name in chosen:
        scores = dict(zip(p.ranked.labels[position[name]], p.ranked.scores[position[name]], strict=True))
        shown = [
            (label, scores.get(label), thumbnails.get(closest.get((name, label), "")))
            for label in p.answers[name]
        ]
        found = tuple(verified.get((name, label)) for label in p.answers[name])
        row = ExampleRow(name, queries.get(name), truths[name], shown, verified=found)
        if row.missed and (name, truths[name]) in closest:
            truth_image = thumbnails.get(closest[name, truths[name]])
            row = ExampleRow(**{**row.__dict__, "truth_image": truth_image, "truth_score": truth_sims[name]})
        rows.append(row)
    return rows


def _closest_gallery_photos(
    p: Prediction, chosen: Sequence[str], position: dict[str, int], truths: dict[str, str | None]
) -> tuple[dict, dict]:
    """(query, individual) -> the individual's gallery photo most similar to the query, for its answers
    and its true individual; and each query's similarity to that true photo."""
    train, test = p.emb.combined("train"), p.emb.combined("test")
    ids = np.asarray(p.emb.index.train_ids)
    closest, truth_sims = {}, {}
    for name in chosen:
        sims = train @ test[position[name]]
        for label in {*p.answers[name], truths[name]} - {NEW, None}:
            rows = np.flatnonzero(ids == label)
            if rows.size:  # a truth absent from the gallery (a new individual) has no photo
                best = rows[np.argmax(sims[rows])]
                closest[name, label] = p.emb.index.train_names[best]
                if label == truths[name]:
                    truth_sims[name] = float(sims[best])
    return closest, truth_sims


def fetch_images(manifest: Manifest, split: str, names: set[str]) -> dict[str, np.ndarray]:
    """Decoded images of the named records of a split (one pass over its shards; stops once all are found)."""
    import tensorflow as tf

    if not names:
        return {}
    wanted = tf.constant(sorted(names))
    parse = records.parse_test_example if split == "test" else records.parse_train_example

    def fields(serialized):
        example = parse(serialized)
        return example["image_name"], example["image"]

    found: dict[str, np.ndarray] = {}
    paths = manifest.shard_paths(split)
    examples = tf.data.TFRecordDataset(paths, num_parallel_reads=min(len(paths), 8)).map(fields)
    examples = examples.filter(lambda name, _: tf.reduce_any(tf.equal(wanted, name)))
    for name, jpeg in examples.as_numpy_iterator():
        found[name.decode()] = tf.io.decode_jpeg(jpeg, channels=3).numpy()
        if len(found) == len(names):
            break
    return found


def plot_examples(path: str, rows: Sequence[ExampleRow]) -> None:
    """A grid: each query, the true individual's photo when the query was missed, then the answers with
    their matched gallery photos; correct answers framed green, wrong ones red."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    truth_column = any(r.truth_image is not None for r in rows)
    first_answer = 2 + truth_column
    columns = first_answer - 1 + max((len(r.answers) for r in rows), default=5)
    figure = Figure(figsize=(2.0 * columns, 2.3 * max(1, len(rows))), dpi=80)
    FigureCanvasAgg(figure)
    for r, row in enumerate(rows):
        query_axes = figure.add_subplot(len(rows), columns, r * columns + 1)
        _tile(query_axes, row.image, f"{row.name}\ntruth: {row.truth}" if row.truth else row.name, None)
        if truth_column:
            axes = figure.add_subplot(len(rows), columns, r * columns + 2)
            if row.truth_image is None:
                axes.set_axis_off()
            else:
                score = "" if row.truth_score is None else f" {row.truth_score:.3f}"
                _tile(axes, row.truth_image, f"missed: {row.truth[:16]}\ntrue photo{score}", True)
        for c, (label, score, _) in enumerate(row.answers):
            axes = figure.add_subplot(len(rows), columns, r * columns + c + first_answer)
            correct = None if row.truth is None else label == row.truth
            score_text = "" if score is None else f"\n{score:.3f}"
            _tile(axes, row.answer_image(c), f"{c + 1}. {label[:16]}{score_text}", correct)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    files.write_bytes(path, buffer.getvalue())


def _tile(axes, image: np.ndarray | None, title: str, correct: bool | None) -> None:
    if image is not None:
        axes.imshow(image)
    else:
        axes.set_facecolor("#dddddd")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title, fontsize=7)
    if correct is not None:
        for spine in axes.spines.values():
            spine.set_edgecolor("tab:green" if correct else "tab:red")
            spine.set_linewidth(4 if correct else 1)
