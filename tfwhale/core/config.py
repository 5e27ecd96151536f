"""Training/predict settings: defaults <- YAML file (changes only) <- `--set section.key=value` overrides."""

from __future__ import annotations

import dataclasses
import os.path
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from tfwhale.core import files
from tfwhale.core.config_values import closest, convert, show, type_name
from tfwhale.core.labels import check_new_share

# Configs shipped with the package; a bare name like "tiny_cpu" means CONFIGS_DIR/tiny_cpu.yaml.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tfwhale/
# Installed from a wheel they sit in tfwhale/configs; in a checkout, in the repo's top-level configs/.
_INSTALLED_CONFIGS = os.path.join(_PACKAGE_DIR, "configs")
_CHECKOUT_CONFIGS = os.path.join(os.path.dirname(_PACKAGE_DIR), "configs")
CONFIGS_DIR = _INSTALLED_CONFIGS if os.path.isdir(_INSTALLED_CONFIGS) else _CHECKOUT_CONFIGS

Head = Literal["arcface", "softmax", "triplet", "triplet_softmax"]
Pooling = Literal["gem", "avg"]


class ConfigError(ValueError):
    """A config file or override that names an unknown setting or holds a value of the wrong type."""


@dataclass(frozen=True)
class DataConfig:
    image_size: int | None = None  # None: the records' size (manifest.json); set, it must equal it
    batch_size: int = 32  # per replica; global batch = batch_size x replicas
    shuffle_buffer: int = 2048
    cache: bool = False  # keep the encoded records of the training folds in memory after the first pass
    num_parallel_calls: int | None = None  # None = tf.data.AUTOTUNE
    deterministic: bool = False  # True: same seed -> same training order (slower)
    sampler: Literal["auto", "random", "pk"] = "auto"  # auto: pk for triplet heads, else random
    ids_per_batch: int = 8  # PK sampler: P individuals per replica batch
    photos_per_id: int = 4  # PK sampler: K photos each (with repeats for individuals with fewer)
    pk_min_photos: int = 2  # PK sampler: only individuals with at least this many photos are drawn


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; every op is off at 0 / False. Defaults are the TPU baseline's."""

    # horizontal mirror, p=0.5. true: same individual (symmetric markings); false: never mirrored (left and
    # right sides differ); new_class: a mirrored photo is labelled as another individual, id + "_flip"
    # (Humpback-challenge trick: twice the classes). Flip TTA at predict needs true.
    flip: bool | Literal["new_class"] = True
    random_resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.8, 1.0)  # fraction of the image area kept
    crop_ratio: tuple[float, float] = (0.75, 1.3333333)  # width / height of the crop
    rotation: float = 0.0  # max degrees either way
    shear: float = 0.0  # max degrees either way
    fill_mode: Literal["reflect", "nearest", "constant"] = "reflect"  # pixels rotated/sheared into view
    brightness: float = 0.1  # max delta, fraction of full scale
    contrast: float = 0.2  # factor in [1 - c, 1 + c]
    saturation: float = 0.3  # factor in [1 - s, 1 + s]
    hue: float = 0.01  # max delta in [0, 0.5]
    grayscale_prob: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels
    erasing_prob: float = 0.0
    erasing_area: tuple[float, float] = (0.02, 0.2)  # fraction of the image area
    erasing_ratio: tuple[float, float] = (0.3, 3.3)  # width / height of the erased box


@dataclass(frozen=True)
class ModelConfig:
    """The model settings, and the one source of their defaults (nets.model.build_models takes this)."""

    backbone: str = "EfficientNetB0"
    weights: str | None = "imagenet"
    embedding_dim: int = 512
    pooling: Pooling = "avg"
    # hub: transformer backbones (DINOv2, ViT): class token, mean or GeM of the patch tokens;
    # auto = the class token where the backbone has one, else mean
    token_pooling: Literal["auto", "cls", "mean", "gem"] = "auto"
    gem_p: float = 3.0
    gem_trainable: bool = True
    dropout: float = 0.0
    head: Head = "arcface"
    arc_s: float = 30.0
    arc_m: float = 0.3
    easy_margin: bool = False
    ls_eps: float = 0.0
    subcenters: int = 1
    dynamic_margins: bool = False
    # dynamic margin per class: margin_a * photo_count ** -margin_lambda + margin_b (GLR 2020 3rd place)
    margin_a: float = 0.5
    margin_lambda: float = 0.25
    margin_b: float = 0.05
    species_head: bool = False
    species_loss_weight: float = 0.1
    triplet_margin: float = 0.3
    triplet_softmax_weight: float = 1.0  # weight of the softmax loss next to the triplet loss


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0  # adamw only
    clipnorm: float | None = None
    schedule: Literal["ramp", "cosine"] = "ramp"
    lr_update: Literal["epoch", "step"] = "epoch"  # epoch: the baseline's stepwise curve; step: smooth
    lr_start: float = 1e-6
    lr_max_per_sample: float = (
        5e-6  # lr_max = this x examples per optimizer update (all replicas and micro-batches)
    )
    lr_min: float = 1e-6
    ramp_epochs: float = 4.0
    sustain_epochs: float = 0.0
    decay: float = 0.9  # per epoch after ramp + sustain
    warmup_epochs: float = 1.0  # cosine schedule only
    accumulate_steps: int = 1  # micro-batches (of data.batch_size per replica) summed into one update
    mixed_precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = "auto"
    seed: int = 42
    val_every: int = 1  # epochs between validation passes
    steps_per_epoch: int | None = None  # None = fold train examples // global batch
    ema_momentum: float | None = None  # None = no weight EMA; else validated, kept and saved: the averages
    # Fine-tuning a pretrained backbone (training/finetune.py):
    backbone_lr_multiplier: float = 1.0  # the backbone steps at this x the learning rate; neck and heads at 1
    frozen_epochs: int = 0  # first epochs with the backbone's weights fixed (multiplier 0)
    freeze_bn: bool = False  # the backbone's BatchNorm layers in inference mode (small per-replica batches)
    verbose: int = 2  # keras fit: 0 silent, 1 progress bar, 2 one line per epoch


RERANK_MODES = ("none", "local")  # predict.rerank (contracts.gallery_manifest.RERANKS: the same two)


@dataclass(frozen=True)
class PredictConfig:
    batch_size: int = 64  # per replica, embedding passes
    tta_flip: bool = False
    knn_k: int = 50
    new_individual_threshold: float | None = None  # None = tuned on out-of-fold predictions
    # Share of OOF queries made new (their individual left out of the gallery) when tuning the threshold,
    # in training validation and predict: Happywhale's test set held ~20% photos of unseen individuals.
    new_share: float = 0.2
    new_share_seed: int = 0  # which individuals the simulation leaves out
    # true: move the OOF-tuned threshold onto the fold-averaged test scale (quantile mapping); off by
    # default: it lost 0.009-0.014 MAP@5 in every run of benchmarks/new_individual.py
    calibrate_threshold: bool = False
    # "local": re-rank by the records' local features, fused with the embedding (issue 24); the default:
    # on nyala-dev the fused ranking scored MAP@5 0.641 against 0.566 for the embedding alone, and on the
    # lions it did not lose (BENCHMARKS.md "Local-feature matching"). "none": the embedding alone.
    rerank: str = "local"
    # --rerank local re-ranks at most this many OOF queries (a seeded sample, each validation fold its
    # share; new_share_seed picks it) to fit its calibrations and tune the threshold: ~1 s a query, so all
    # of Kaggle's 51k took hours; null: every one. Test queries are always all re-ranked.
    rerank_oof_queries: int | None = 2000


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)


def _sections() -> dict[str, type]:
    return {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file's changes, then `section.key=value` overrides, checked and typed."""
    changes: dict[str, dict[str, Any]] = {}
    if path:
        resolved = resolve_config_path(path)
        _merge(changes, _read_yaml(resolved), resolved)
    for override in overrides:
        _merge(changes, _parse_override(override), f"override {override!r}")
    sections = {}
    for name, section_type in _sections().items():
        sections[name] = section_type(**changes.get(name, {}))
    cfg = Config(**sections)
    validate(cfg)
    return cfg


def resolve_config_path(path: str) -> str:
    """A file path (local or gs://) as given, or a bare name like "tiny_cpu" from the shipped configs."""
    if files.exists(path):
        return path
    is_bare_name = "/" not in path and not path.endswith((".yaml", ".yml"))
    shipped = os.path.join(CONFIGS_DIR, f"{path}.yaml")
    if is_bare_name and files.exists(shipped):
        return shipped
    names = sorted(n.removesuffix(".yaml") for n in files.listdir(CONFIGS_DIR) if n.endswith(".yaml"))
    raise ConfigError(f"config {path!r} not found: not a file, nor one of the shipped configs {names}")


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(files.read_text(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data:, model:, ...), got {show(data)}")
    return data


def _parse_override(override: str) -> dict[str, dict[str, Any]]:
    key, sep, text = override.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise ConfigError(f"override {override!r}: expected section.key=value, e.g. train.epochs=5")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: the value is not valid YAML: {err}") from err
    return {section: {name: value}}


def _merge(changes: dict[str, dict[str, Any]], new: Mapping[str, Any], source: str) -> None:
    """Check every section/key in `new` against the dataclasses, convert its value, record it."""
    sections = _sections()
    for section, values in new.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown config section {section!r}{closest(section, sections)}")
        if values is None:  # a section header whose keys are all commented out
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping of key: value")
        hints = typing.get_type_hints(sections[section])
        for key, value in values.items():
            if key not in hints:
                keys = [f"{section}.{k}" for k in hints]
                raise ConfigError(f"{source}: unknown key {section}.{key}{closest(f'{section}.{key}', keys)}")
            try:
                converted = convert(value, hints[key])
            except (TypeError, ValueError) as err:
                raise ConfigError(
                    f"{source}: {section}.{key} expects {type_name(hints[key])}, got {show(value)}"
                ) from err
            changes.setdefault(section, {})[key] = converted


def validate(cfg: Config) -> None:
    """Value checks the types cannot express; ConfigError naming the setting."""
    problems = []
    a, d = cfg.augment, cfg.data
    for name in ("crop_scale", "crop_ratio", "blur_sigma", "erasing_area", "erasing_ratio"):
        low, high = getattr(a, name)
        if not 0 < low <= high:
            problems.append(f"augment.{name}={[low, high]} must satisfy 0 < low <= high")
    for name in ("grayscale_prob", "blur_prob", "erasing_prob"):
        if not 0 <= getattr(a, name) <= 1:
            problems.append(f"augment.{name}={getattr(a, name)} must be a probability in [0, 1]")
    if a.crop_scale[1] > 1 or a.erasing_area[1] > 1:
        problems.append("augment.crop_scale and augment.erasing_area are area fractions, at most 1")
    if not 0 <= a.hue <= 0.5:
        problems.append(f"augment.hue={a.hue} must be in [0, 0.5]")
    counts = ("batch_size", "ids_per_batch", "photos_per_id", "pk_min_photos")
    sizes = [("data.image_size", d.image_size)] if d.image_size is not None else []
    for name, value in (
        sizes
        + [(f"data.{k}", getattr(d, k)) for k in counts]
        + [(f"train.{k}", getattr(cfg.train, k)) for k in ("epochs", "accumulate_steps", "val_every")]
    ):
        if value < 1:
            problems.append(f"{name}={value} must be at least 1")
    m, t, p = cfg.model, cfg.train, cfg.predict
    for name, value in (
        ("model.embedding_dim", m.embedding_dim), ("model.subcenters", m.subcenters),
        ("predict.batch_size", p.batch_size), ("predict.knn_k", p.knn_k),
    ):  # fmt: skip
        if value < 1:
            problems.append(f"{name}={value} must be at least 1")
    for name, value in (
        ("model.arc_s", m.arc_s), ("model.gem_p", m.gem_p), ("train.lr_max_per_sample", t.lr_max_per_sample),
    ):  # fmt: skip
        if value <= 0:
            problems.append(f"{name}={value} must be > 0")
    if not 0 <= m.arc_m < 1.5:  # cos(theta + m) stops being monotonic past pi/2: use radians
        problems.append(f"model.arc_m={m.arc_m} must be in [0, 1.5) (radians)")
    for name, value in (("model.dropout", m.dropout), ("model.ls_eps", m.ls_eps)):
        if not 0 <= value < 1:
            problems.append(f"{name}={value} must be in [0, 1)")
    if t.backbone_lr_multiplier < 0:
        problems.append(f"train.backbone_lr_multiplier={t.backbone_lr_multiplier} must be >= 0")
    if not 0 <= t.frozen_epochs <= t.epochs:
        problems.append(f"train.frozen_epochs={t.frozen_epochs} must be in [0, train.epochs={t.epochs}]")
    try:
        check_new_share(cfg.predict.new_share, "predict.new_share")
    except ValueError as err:
        problems.append(str(err))
    if uses_pk_sampler(cfg) and d.batch_size != d.ids_per_batch * d.photos_per_id:
        problems.append(
            f"data.batch_size={d.batch_size} must equal data.ids_per_batch x data.photos_per_id "
            f"({d.ids_per_batch} x {d.photos_per_id}) with the PK sampler"
        )
    if p.rerank_oof_queries is not None and p.rerank_oof_queries < 1:
        problems.append(f"predict.rerank_oof_queries={p.rerank_oof_queries} must be at least 1 (null: all)")
    if cfg.predict.rerank not in RERANK_MODES:
        problems.append(f"predict.rerank={cfg.predict.rerank!r} must be one of {RERANK_MODES}")
    if cfg.predict.tta_flip and a.flip is not True:
        problems.append(flip_tta_refusal(a.flip))
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def flip_tta_refusal(flip: bool | str) -> str:
    """Why flip TTA cannot go with a run trained with augment.flip=`flip` (false or new_class)."""
    if flip == "new_class":
        why = "its model learned a mirrored photo as another individual (id_flip)"
    else:
        why = "its model never saw a mirrored photo (left and right sides differ)"
    shown = "false" if flip is False else flip
    return (
        f"flip TTA needs augment.flip=true, the run has augment.flip={shown}: {why}, so the mean of a photo "
        "and its mirror would mix two sides; predict without --tta flip (predict.tta_flip=false)"
    )


def uses_pk_sampler(cfg: Config) -> bool:
    """Whether training batches are P individuals x K photos (the triplet heads need positives in-batch)."""
    if cfg.data.sampler == "auto":
        return cfg.model.head in ("triplet", "triplet_softmax")
    return cfg.data.sampler == "pk"


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Plain YAML-safe dict (tuples become lists)."""

    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, tuple) else value

    return {
        section: {k: plain(v) for k, v in values.items()}
        for section, values in dataclasses.asdict(cfg).items()
    }


def save_config(cfg: Config, path: str) -> None:
    """The resolved config, every key, written atomically (load_config(path) gives `cfg` back)."""
    files.write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
