"""build-tfrecords --runner beam: byte-identical to the local build, retried bundles, resume, errors."""

import json
import logging
import sys
from importlib.util import find_spec
from pathlib import Path

import pandas as pd
import pytest
import tensorflow as tf

from tests.test_builder_build import BAD_ROWS, N_TRAIN, build, make_kaggle, save_photo, shard_bytes
from tfrecords_builder import beam_pipeline, cli
from tfrecords_builder.plan import PlannedShard, plan_fingerprint
from tfwhale.contracts import records

needs_beam = pytest.mark.skipif(
    find_spec("apache_beam") is None, reason="apache-beam is not installed: pip install -e '.[beam]'"
)
# Beam's in-process DirectRunner (FnApiRunner) never retries a failed bundle; the bundle-based one retries
# each failed bundle up to 4 times, as Dataflow does.
RETRYING_RUNNER = "--runner=BundleBasedDirectRunner"


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> Path:
    """The Kaggle-layout set of test_builder_build with boxes and its bad rows: 6 rejects, 2 box fallbacks."""
    data = make_kaggle(tmp_path_factory.mktemp("beam") / "data")
    images = data / "train_images"
    full = (images / "tr001.jpg").read_bytes()
    (images / "trunc.jpg").write_bytes(full[: len(full) // 2])
    (images / "text.jpg").write_text("this is not a photo\n")
    save_photo(images / "far.jpg", 7)
    save_photo(images / "flat.jpg", 8)
    with open(data / "train.csv", "a") as csv:
        for image, box, _ in BAD_ROWS:
            csv.write(f"{image},beluga,whale0,{box}\n")
    return data


@pytest.fixture(scope="module")
def local_build(bad_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    assert build(bad_data, out) == cli.EXIT_REJECTS
    return out


def beam_build(data: Path, out: Path, options: str = "") -> int:
    return build(data, out, "--runner", "beam", "--beam-options", options)


def comparable_manifest(out: Path) -> dict:
    data = json.loads((out / records.MANIFEST_NAME).read_text())
    data.pop("created")
    return data


def assert_same_build(beam_out: Path, local_out: Path) -> None:
    """Same shard bytes, rejects.csv and manifest (but its time), no temp files, each record once."""
    assert shard_bytes(beam_out) == shard_bytes(local_out)
    assert (beam_out / records.REJECTS_NAME).read_text() == (local_out / records.REJECTS_NAME).read_text()
    assert comparable_manifest(beam_out) == comparable_manifest(local_out)
    assert not [path.name for path in beam_out.rglob("*") if ".tmp-" in path.name]
    names = [
        records.parse_train_example(serialized)["image_name"].numpy().decode()
        for serialized in tf.data.TFRecordDataset(records.load_manifest(str(beam_out)).shard_paths("train"))
    ]
    assert len(names) == len(set(names)) == N_TRAIN + 2  # far.jpg and flat.jpg are built uncropped


@needs_beam
@pytest.mark.parametrize(
    "options",
    ["", "--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing"],
    ids=["in-process", "multi-processing"],
)
def test_direct_runner_build_is_byte_identical_to_the_local_build(bad_data, local_build, tmp_path, options):
    out = tmp_path / "beam"
    assert beam_build(bad_data, out, options) == cli.EXIT_REJECTS
    assert_same_build(out, local_build)
    rejects = pd.read_csv(out / records.REJECTS_NAME)
    assert len(rejects) == 6 and rejects["reason"].str.startswith("cannot decode image").sum() == 2
    assert not (out / ".parts" / beam_pipeline.PLAN_DIR).exists()
    assert cli.main(["verify", str(out)]) == cli.EXIT_OK


@needs_beam
@pytest.mark.parametrize(
    "fail", ["photo:tr005.jpg", "photo:trunc.jpg", "shard:train-fold1-0000.tfrec"], ids=lambda f: f
)
def test_a_retried_bundle_leaves_the_same_build(bad_data, local_build, tmp_path, monkeypatch, caplog, fail):
    """A photo's processing, or a shard's write (after the shard is in place), raises on its first try;
    Beam retries the bundle and the build equals a clean one: one complete shard, no record twice."""
    monkeypatch.setenv(beam_pipeline.FAIL_ONCE_ENV, fail)
    out = tmp_path / "beam"
    assert beam_build(bad_data, out, RETRYING_RUNNER) == cli.EXIT_REJECTS
    stage, name = fail.split(":")
    assert f"failing the first try of {stage} {name} on purpose" in caplog.text  # it did fail once
    assert_same_build(out, local_build)


@needs_beam
def test_a_failed_pipeline_stops_and_the_same_command_resumes(
    bad_data, local_build, tmp_path, monkeypatch, caplog
):
    """The in-process DirectRunner does not retry: the build stops with one line, and a rerun finishes it."""
    monkeypatch.setenv(beam_pipeline.FAIL_ONCE_ENV, "photo:tr005.jpg")
    out = tmp_path / "beam"
    assert beam_build(bad_data, out) == cli.EXIT_FATAL
    errors = [
        r.getMessage() for r in caplog.records if r.name == "build-tfrecords" and r.levelno == logging.ERROR
    ]
    assert (
        len(errors) == 1 and "the Beam pipeline failed" in errors[0] and "run the same command" in errors[0]
    )
    assert not (out / records.MANIFEST_NAME).exists()
    assert beam_build(bad_data, out) == cli.EXIT_REJECTS
    assert_same_build(out, local_build)


@needs_beam
@pytest.mark.gcs
def test_gs_input_and_output_on_beam(bad_data, local_build, gcs_bucket):
    """What a Dataflow build does: photos read from gs:// by the workers, plan files, shards and sidecars
    written there (shards staged locally, uploaded, checked, renamed); the same bytes as the local build."""
    for path in sorted((bad_data / "test_images").iterdir()):
        tf.io.gfile.copy(str(path), f"{gcs_bucket}/in/test_images/{path.name}")
    out = f"{gcs_bucket}/records"
    argv = [
        "--train-csv", str(bad_data / "train.csv"), "--train-images", str(bad_data / "train_images"),
        "--test-images", f"{gcs_bucket}/in/test_images", "--out", out,
        "--size", "48", "--images-per-shard", "4", "--runner", "beam",
    ]  # fmt: skip
    assert cli.main(argv) == cli.EXIT_REJECTS
    remote = {name: tf.io.gfile.GFile(f"{out}/{name}", "rb").read() for name in shard_bytes(local_build)}
    assert remote == shard_bytes(local_build)
    assert not [name for name in tf.io.gfile.listdir(out) if ".tmp-" in name]
    assert not tf.io.gfile.exists(f"{out}/.parts/{beam_pipeline.PLAN_DIR}")
    assert cli.main(["verify", out]) == cli.EXIT_OK


def test_missing_apache_beam_is_one_line_naming_the_extra(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # import apache_beam now raises ImportError
    data = make_kaggle(tmp_path / "data", n_train=2, n_test=1)
    assert beam_build(data, tmp_path / "out") == cli.EXIT_FATAL
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "pip install 'tfwhale[beam]'" in errors[0]
    assert not (tmp_path / "out").exists()


@needs_beam
def test_dataflow_refuses_local_paths_before_starting(tmp_path, caplog):
    data = make_kaggle(tmp_path / "data", n_train=2, n_test=1)
    options = "--runner=DataflowRunner --project p --region r --temp_location gs://b/tmp"
    assert beam_build(data, tmp_path / "out", options) == cli.EXIT_FATAL
    assert f"{tmp_path / 'out'}: Dataflow workers cannot read local paths" in caplog.text


def test_beam_options_need_the_beam_runner(tmp_path, caplog):
    data = make_kaggle(tmp_path / "data", n_train=2, n_test=1)
    assert build(data, tmp_path / "out", "--beam-options", "--runner=DirectRunner") == cli.EXIT_FATAL
    assert "--beam-options needs --runner beam" in caplog.text


def test_a_planned_shard_survives_its_json_for_the_workers(kaggle_plan):
    for shard in kaggle_plan:
        again = PlannedShard.from_json(json.loads(json.dumps(shard.to_json())))
        assert again == shard
        assert plan_fingerprint(again.name, again.items, {"k": 1}) == plan_fingerprint(
            shard.name, shard.items, {"k": 1}
        )


@pytest.fixture
def kaggle_plan(tmp_path) -> list[PlannedShard]:
    data = make_kaggle(tmp_path / "data", n_train=12, n_test=3)
    args = cli.build_parser().parse_args(["--data", str(data), "--out", "x", "--size", "8", "--folds", "2"])
    shards = cli.plan_build(args, cli.resolve_inputs(args))[0]
    assert any(item.box is not None for shard in shards for item in shard.items)
    return shards


def test_records_are_serialized_in_one_order_whatever_the_process():
    """What lets two builds (or Beam's workers) agree byte for byte: without deterministic serialization
    protobuf (upb) writes a record's feature map in an order seeded per process (7 features: 5,040
    orders), which the canonical order below matches only by chance."""
    raw = records.encode_train_example(b"jpeg", "a.jpg", "w1", 1, "beluga", 0, 2)
    example = tf.train.Example.FromString(raw)
    rebuilt = tf.train.Example()
    for key in sorted(example.features.feature, reverse=True):  # another insertion order
        rebuilt.features.feature[key].CopyFrom(example.features.feature[key])
    assert raw == rebuilt.SerializeToString(deterministic=True)
    test_raw = records.encode_test_example(b"jpeg", "a.jpg")
    assert test_raw == tf.train.Example.FromString(test_raw).SerializeToString(deterministic=True)
