"""tf.data input for the train and predict stages: fold shards -> decoded, augmented, batched examples.

Training (and validation-loss) batches have static shapes and no strings, so they feed TPUs:

    (inputs, labels) = ({"image": uint8 [B, S, S, 3] (0..255), "label": int32 [B]},
                        {"label": int32 [B], "species_label": int32 [B]})

The trainer maps `labels` onto its model's output names (fold_trainer.to_targets). B is the batch each step
receives: the global batch (all replicas, all micro-batches, which the train step splits) or, under
JAX accumulation, one micro-batch of it.

Evaluation passes are ordered, unaugmented and keep every example: the last batch is padded to a
full static batch and callers keep the first `count` rows (`embed` does this for you).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfwhale.contracts import records
from tfwhale.contracts.records import Manifest, ManifestError
from tfwhale.core import files
from tfwhale.core.config import Config, ConfigError, uses_pk_sampler
from tfwhale.feed.augment import augment_image, flip_as_new_class
from tfwhale.feed.pk_sampler import pk_examples
from tfwhale.feed.shards import ONE_PROCESS, TRAIN_CYCLE, Share, read_records, share_of, training_fields

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
_EVAL_CYCLE = 8  # a fixed shard interleave keeps the eval order the same on every machine
# independent random streams under one seed (pk_sampler.PK_STREAM is 0): how each example is augmented,
# which examples become their individual's mirror class (augment.flip=new_class)
_AUGMENT_STREAM, _FLIP_CLASS_STREAM = 1, 2


def with_records_image_size(cfg: Config, manifest: Manifest) -> Config:
    """cfg with data.image_size taken from the records when unset; ConfigError when set to another size."""
    if cfg.data.image_size is None:
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=manifest.image_size))
    if cfg.data.image_size != manifest.image_size:
        raise ConfigError(
            f"config data.image_size={cfg.data.image_size} but the records in {manifest.root} are "
            f"{manifest.image_size} px; drop data.image_size (the records' size is used), set it to "
            f"{manifest.image_size}, or rebuild the records"
        )
    return cfg


def _image_size(cfg: Config, manifest: Manifest) -> int:
    return with_records_image_size(cfg, manifest).data.image_size


def shard_paths(manifest: Manifest, split: str, folds: list[int] | None) -> list[str]:
    """Shard files of a split (and folds); clear errors for unknown folds and absent shards."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if split == "train" and folds is not None:
        unknown = [f for f in folds if not 0 <= f < manifest.n_folds]
        if unknown:
            raise ValueError(
                f"folds {unknown} do not exist: {manifest.root} has folds 0..{manifest.n_folds - 1}"
            )
        empty = [f for f in folds if not manifest.shards("train", [f])]
        if empty:
            raise ManifestError(f"{manifest.root}: manifest lists no shards for train folds {empty}")
    paths = manifest.shard_paths(split, folds)
    if not paths:
        raise ManifestError(f"{manifest.root}: manifest lists no {split} shards")
    absent = [p for p in paths if not files.exists(p)]
    if absent:
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        raise ManifestError(f"{len(absent)} shard(s) listed in the manifest are missing: {shown}")
    return paths


def _random_examples(paths: list[str], cfg: Config, seed: int, share: Share) -> tf.data.Dataset:
    """This process's training examples (encoded images) in shuffled order, forever."""
    own_paths, own_rows = share_of(paths, share)
    examples = read_records(own_paths, TRAIN_CYCLE, shuffle_seed=seed)
    if own_rows is not None:  # fewer shards than processes: every process reads all, keeps its rows
        examples = examples.shard(*own_rows)
    examples = examples.map(training_fields, num_parallel_calls=AUTOTUNE)
    if cfg.data.cache:
        examples = examples.cache()  # encoded bytes: about the size of the shards, not of decoded images
    return examples.shuffle(cfg.data.shuffle_buffer, seed=seed).repeat()


def _inputs_and_labels(batch: dict[str, tf.Tensor]) -> tuple[dict, dict]:
    inputs = {"image": batch["image"], "label": batch["label"]}
    return inputs, {"label": batch["label"], "species_label": batch["species_label"]}


def _training_example(example: dict[str, tf.Tensor], image: tf.Tensor) -> dict[str, tf.Tensor]:
    return {
        "image": tf.cast(tf.round(image), tf.uint8),
        "label": tf.cast(example["label"], tf.int32),
        "species_label": tf.cast(example["species_label"], tf.int32),
    }


def train_dataset(
    manifest: Manifest, folds: list[int], cfg: Config, global_batch: int, seed: int,
    share: Share = ONE_PROCESS,
) -> tf.data.Dataset:  # fmt: skip
    """Endless augmented training batches of `global_batch` examples from the shards of `folds`
    (see the module doc for their structure). With several training processes, `share` is
    (process index, process count): each reads its own shards (shards.share_of) and `global_batch`
    is the batch this process delivers."""
    paths = shard_paths(manifest, "train", folds)
    index, count = share
    size, augment, n_individuals = _image_size(cfg, manifest), cfg.augment, len(manifest.individuals)
    if uses_pk_sampler(cfg):
        group = cfg.data.ids_per_batch * cfg.data.photos_per_id
        if global_batch % group:
            raise ConfigError(f"PK sampler: global batch {global_batch} is not a multiple of P x K = {group}")
        # each process holds every photo (a group needs K of one individual) and draws its own groups
        examples = pk_examples(paths, cfg, seed + 7919 * index)
    else:
        examples = _random_examples(paths, cfg, seed, share)

    def prepare(position: tf.Tensor, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        position = position * count + index  # unique over the processes: no two draw the same augmentation
        example_seed = tf.random.experimental.stateless_fold_in(
            tf.constant([seed, _AUGMENT_STREAM], tf.int64), position
        )
        image = augment_image(records.decode_image(example["image"], size), example_seed, augment)
        if augment.flip == "new_class":
            flip_seed = tf.random.experimental.stateless_fold_in(
                tf.constant([seed, _FLIP_CLASS_STREAM], tf.int64), position
            )
            image, label = flip_as_new_class(image, example["label"], flip_seed, n_individuals)
            example = {**example, "label": label}
        return _training_example(example, image)

    batches = examples.enumerate().map(prepare, num_parallel_calls=cfg.data.num_parallel_calls or AUTOTUNE)
    batches = batches.batch(global_batch, drop_remainder=True)
    batches = batches.map(_inputs_and_labels).prefetch(AUTOTUNE)
    return batches.with_options(_training_options(cfg.data.deterministic))


def _training_options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    # the records are split over the training processes here (share); TF must not split them again
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def val_loss_dataset(
    manifest: Manifest, folds: list[int], cfg: Config, global_batch: int, share: Share = ONE_PROCESS
) -> tf.data.Dataset:
    """Unaugmented batches shaped like train_dataset's, for Keras' validation loss: a fixed order,
    full batches only (at least one: a fold smaller than a batch is repeated to fill it); with several
    processes, each reads every n-th example (share) and as many batches as the others."""
    paths = shard_paths(manifest, "train", folds)
    size = _image_size(cfg, manifest)
    index, processes = share

    def prepare(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        example = training_fields(serialized)
        return _training_example(example, records.decode_image(example["image"], size))

    n_batches = max(1, manifest.count("train", folds) // processes // global_batch)
    examples = read_records(paths, _EVAL_CYCLE)
    if processes > 1:
        examples = examples.shard(processes, index)
    examples = examples.map(prepare, num_parallel_calls=AUTOTUNE)
    batches = examples.repeat().batch(global_batch, drop_remainder=True).take(n_batches)
    return batches.map(_inputs_and_labels).prefetch(AUTOTUNE).with_options(_training_options(True))


def _eval_fields(split: str, size: int):
    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        if split == "test":
            example = records.parse_test_example(serialized)
            return {
                "image": records.decode_image(example["image"], size),
                "image_name": example["image_name"],
            }
        example = records.parse_train_example(serialized)
        fields = {k: example[k] for k in ("image_name", "individual_id", "species")}
        return {
            "image": records.decode_image(example["image"], size),
            **fields,
            "label": tf.cast(example["label"], tf.int32),
        }

    return parse


def _padding_row(split: str, size: int) -> dict[str, tf.Tensor]:
    row = {"image": tf.zeros([size, size, 3], tf.uint8), "image_name": tf.constant("")}
    if split == "train":
        row.update(individual_id=tf.constant(""), species=tf.constant(""), label=tf.constant(-1, tf.int32))
    return row


def eval_dataset(
    manifest: Manifest, split: str, folds: list[int] | None, batch: int, share: Share = ONE_PROCESS
) -> tuple[tf.data.Dataset, int]:
    """Ordered, unaugmented batches of every example of the split/folds, last batch padded.

    Yields dicts: image uint8 [batch, S, S, 3], image_name; on the train split also label (int32,
    -1 on padding rows), individual_id, species. Returns the dataset and the true example count.
    With share=(index, processes) of several processes, this process gets rows index, index + processes, ...
    of that order, padded so that every process runs as many batches (the returned count stays the total).
    """
    if batch < 1:
        raise ValueError(f"eval batch must be at least 1, got {batch}")
    paths = shard_paths(manifest, split, folds)
    size = manifest.image_size
    index, processes = share
    rows = read_records(paths, _EVAL_CYCLE)
    count = manifest.count(split, folds)
    n_batches = -(-count // (batch * processes))
    if processes > 1:  # before decoding: each process decodes only its own rows
        rows = rows.shard(processes, index)
    own = len(range(index, count, processes))
    # the padding completes the last batch; drop_remainder then drops only padding
    n_padding = n_batches * batch - own if processes > 1 else batch - 1
    rows = rows.map(_eval_fields(split, size), num_parallel_calls=AUTOTUNE)
    padding = tf.data.Dataset.from_tensors(_padding_row(split, size)).repeat(n_padding)
    rows = rows.concatenate(padding)
    batches = rows.batch(batch, drop_remainder=True)
    # a known length lets Keras predict size its progress; a miscounting manifest fails loudly here
    batches = batches.apply(tf.data.experimental.assert_cardinality(n_batches))
    options = tf.data.Options()
    options.deterministic = True
    return batches.prefetch(AUTOTUNE).with_options(options), count


# eval_metadata per (records, split, folds): every fold model and validation embeds the same records,
# and each pass over them reads every image's bytes (gigabytes from gs:// at 768 px)
_METADATA: dict[tuple[str, str, str, tuple[int, ...] | None], dict[str, list[Any]]] = {}


def eval_metadata(manifest: Manifest, split: str, folds: list[int] | None) -> dict[str, list[Any]]:
    """The eval pass's names (and ids, species, labels for train) in the same order, without images.

    Read once per build (manifest sha256), split and folds in a process; callers get their own lists.
    """
    if not manifest.sha256:  # a manifest made in memory: nothing identifies the build
        return _read_metadata(manifest, split, folds)
    key = (manifest.root, manifest.sha256, split, None if folds is None else tuple(folds))
    if key not in _METADATA:
        _METADATA[key] = _read_metadata(manifest, split, folds)
    return {name: list(values) for name, values in _METADATA[key].items()}


def _read_metadata(manifest: Manifest, split: str, folds: list[int] | None) -> dict[str, list[Any]]:
    paths = shard_paths(manifest, split, folds)
    parse = records.parse_test_example if split == "test" else records.parse_train_example
    keys = ["image_name"] if split == "test" else ["image_name", "individual_id", "species", "label"]
    rows = read_records(paths, _EVAL_CYCLE).map(lambda s: {k: parse(s)[k] for k in keys})
    options = tf.data.Options()
    options.deterministic = True
    columns: dict[str, list[Any]] = {k: [] for k in keys}
    for batch in rows.with_options(options).batch(4096).as_numpy_iterator():
        for key in keys:
            columns[key].extend(v.decode() if isinstance(v, bytes) else int(v) for v in batch[key])
    return columns


class Embedded(NamedTuple):
    embeddings: np.ndarray  # [N, D], in eval order
    names: list[str]  # image_name per row
    ids: list[str] | None  # individual_id per row (train split only)
    species: list[str] | None  # species per row (train split only)


def embed(model: Any, manifest: Manifest, split: str, folds: list[int] | None, batch: int) -> Embedded:
    """Embeddings [N, D] of every example in eval order, with names (and ids, species on train).

    `model` maps an image batch to embeddings (or to a dict holding "embedding"; flip TTA is
    query.embedder.TTAModel standing in for the model). Padding rows are dropped. The names come from an
    image-free pass over the same ordered records, made first so a manifest that miscounts fails before
    the model runs.
    """
    meta = eval_metadata(manifest, split, folds)
    names = meta["image_name"]
    count = manifest.count(split, folds)
    if len(names) != count:
        raise ManifestError(
            f"{manifest.root}: manifest counts {count} {split} examples in folds {folds}, "
            f"shards hold {len(names)}"
        )
    dataset, _ = eval_dataset(manifest, split, folds, batch)
    images = dataset.map(lambda b: b["image"])
    output = model.predict(images, verbose=0)
    embeddings = np.asarray(output["embedding"] if isinstance(output, dict) else output)
    if split == "test":
        return Embedded(embeddings[:count], names, None, None)
    return Embedded(embeddings[:count], names, meta["individual_id"], meta["species"])
