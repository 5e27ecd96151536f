"""Training past one host, on localhost: two JAX processes (gloo CPU collectives) and two TF_CONFIG workers
against one process of the same global batch; disjoint record shares; one writer; a lost peer; resume.

The two-process runs are slow (each process starts TF and JAX): `python3 dev.py test --slow`, or
`pytest tests/test_multihost.py -m slow`.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.records_fixture import make_records
from tfwhale.contracts import records
from tfwhale.feed.data import eval_dataset, shard_paths
from tfwhale.feed.shards import share_of
from tfwhale.training.checkpoint import STATE_NAME, save_weights
from tfwhale.training.cluster import ClusterError, cluster_request, lost_peer_message
from tfwhale.training.distribute import Runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config", "tiny_cpu", "--set", "data.image_size=32", "--set", "model.backbone=TinyConvNet",
    "--set", "data.batch_size=4", "--set", "data.shuffle_buffer=16", "--set", "model.embedding_dim=16",
    "--set", "train.verbose=0", "--set", "train.val_every=1",
]  # fmt: skip
WAIT = 420  # seconds any group of processes may take before the test fails (never hangs)


@pytest.fixture(scope="module")
def rec(tmp_path_factory) -> str:
    return make_records(tmp_path_factory.mktemp("rec"), n_individuals=6, size=32, n_folds=2, shard_size=3)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _start(args: list[str], env_extra: dict[str, str], log: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", **env_extra)
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tfwhale.train", *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _finish(procs: list[subprocess.Popen], timeout: float = WAIT) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError("a training process did not finish in time") from None
    return codes


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _jax_group(args: list[str], tmp, tag: str, peer_timeout: int = 10) -> list[subprocess.Popen]:
    port = _free_ports(1)[0]
    procs = []
    for pid in range(2):
        cluster = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(pid)]
        cluster += ["--peer-timeout", str(peer_timeout)]
        procs.append(_start([*args, *cluster], {"KERAS_BACKEND": "jax"}, str(tmp / f"{tag}{pid}.log")))
    return procs


def _tf_group(args: list[str], tmp, tag: str, peer_timeout: int = 10) -> list[subprocess.Popen]:
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        env = {"KERAS_BACKEND": "tensorflow", "TF_CONFIG": config}
        procs.append(
            _start([*args, "--peer-timeout", str(peer_timeout)], env, str(tmp / f"{tag}{index}.log"))
        )
    return procs


# ---- fast: what each process reads, and the flags ----


def test_process_shares_of_the_training_shards_are_disjoint_and_complete(rec):
    manifest = records.load_manifest(rec)
    paths = shard_paths(manifest, "train", [1])
    assert len(paths) >= 2
    shares = [share_of(paths, (index, 2)) for index in range(2)]
    assert all(rows is None for _, rows in shares)  # enough shard files: split by file
    first, second = (set(p) for p, _ in shares)
    assert first and second and not first & second and first | second == set(paths)
    # the examples behind them: each training example is read by exactly one process
    names = [_image_names(p) for p, _ in shares]
    everyone = [n for share in names for n in share]
    assert len(everyone) == len(set(everyone)) == manifest.count("train", [1])
    # fewer files than processes: each reads every file and keeps its own rows
    assert share_of(paths[:1], (1, 2)) == (paths[:1], (1, 2))


def _image_names(paths: list[str]) -> list[str]:
    from tfwhale.feed.shards import read_records

    rows = read_records(paths, 4).map(lambda s: records.parse_train_example(s)["image_name"])
    return [name.decode() for name in rows.as_numpy_iterator()]


def test_eval_shares_interleave_back_to_the_one_process_order(rec):
    manifest = records.load_manifest(rec)
    whole, count = eval_dataset(manifest, "train", [0], 4)
    names = [n for b in whole.as_numpy_iterator() for n in b["image_name"]][:count]
    parts = []
    for index in range(2):
        dataset, _ = eval_dataset(manifest, "train", [0], 3, (index, 2))
        parts.append([n for b in dataset.as_numpy_iterator() for n in b["image_name"]])
    assert len(parts[0]) == len(parts[1]), "every process runs as many batches"
    interleaved = [n for pair in zip(*parts, strict=True) for n in pair][:count]
    assert interleaved == names and len(set(names)) == count


def test_cluster_flags_are_all_or_none(monkeypatch):
    for name in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert not cluster_request(None, None, None, 10).explicit
    with pytest.raises(ClusterError, match="--process-id"):
        cluster_request("127.0.0.1:1234", 2, None, 10)
    with pytest.raises(ClusterError, match=r"outside 0\.\.1"):
        cluster_request("127.0.0.1:1234", 2, 2, 10)
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "10.0.0.1:1234,10.0.0.2:1234")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "1")
    assert cluster_request(None, None, None, 10) == cluster_request("10.0.0.1:1234", 2, 1, 10)


def test_a_tf_collective_failure_names_the_lost_worker_and_its_address(monkeypatch):
    workers = ["10.0.0.1:2222", "10.0.0.2:2222"]
    config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    error = RuntimeError(
        "Graph execution error:\n\nCollective ops is aborted by: The following tasks are unhealthy "
        "(stopped sending heartbeats):\n/job:worker/replica:0/task:1\n"
    )
    runtime = Runtime("tensorflow", "cpu", 2, None, process_id=0, num_processes=2)
    message = lost_peer_message(error, runtime)
    assert message.startswith("lost contact with training process 1 on 10.0.0.2:2222 (of 2)")
    assert "unhealthy" in message and "run the same command on every host again" in message


def test_a_process_other_than_the_writer_leaves_no_file(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    target = tmp_path / "w.weights.h5"
    assert save_weights(model, str(target), write=False) == "" and not target.exists()
    assert save_weights(model, str(target)) and target.exists()


# ---- slow: real processes ----

FOLD_FILES = ("config.yaml", "model.keras", "embedding.keras", "best.weights.h5", "last.weights.h5",
              "history.csv", "run.json", "training_curve.png", "oof.npz")  # fmt: skip


def _check_run_folder(out: str, epochs: int, processes: int) -> dict:
    fold = os.path.join(out, "fold0")
    for name in FOLD_FILES:
        assert os.path.exists(os.path.join(fold, name)), name
    leftovers = [n for _, _, names in os.walk(out) for n in names if ".tmp-" in n]
    assert not leftovers, leftovers
    info = _json(os.path.join(fold, "run.json"))
    assert info["status"] == "finished" and info["epochs"] == epochs and info["processes"] == processes
    info["_path"] = os.path.join(fold, "run.json")
    events = [n for _, _, names in os.walk(os.path.join(fold, "tensorboard", "train")) for n in names]
    assert len(events) == 1, f"one writer of the TensorBoard log, got {events}"
    oof = np.load(os.path.join(fold, "oof.npz"))
    names = list(oof["image_names"])
    assert len(names) == len(set(names)) == oof["embeddings"].shape[0], "each val example embedded once"
    np.testing.assert_allclose(np.linalg.norm(oof["embeddings"], axis=1), 1.0, atol=1e-4)
    return info


def _losses(info: dict) -> list[float]:
    with open(os.path.join(os.path.dirname(info["_path"]), "history.csv")) as f:
        rows = f.read().splitlines()
    column = rows[0].split(",").index("loss")
    return [float(row.split(",")[column]) for row in rows[1:]]


def _predict_loads(rec: str, run: str, tmp) -> None:
    from tfwhale import predict

    assert (
        predict.main(["--runs", run, "--records", rec, "--out", str(tmp / "predict"), "--no-calibrate"]) == 0
    )
    assert os.path.exists(tmp / "predict" / "submission.csv")


# 40 steps of a model that does not move (the config refuses a zero peak rate; 1e-12 leaves the weights as
# they are): both runs average the same seeded model's loss over batches of the same photos
SAME_RUN_STEPS = ["--set", "train.steps_per_epoch=20", "--set", "train.lr_start=0", "--set", "train.lr_min=0"]
SAME_RUN_STEPS += ["--set", "train.lr_max_per_sample=1e-12"]


def _compare(single: dict, multi: dict) -> None:
    assert multi["global_batch"] == single["global_batch"] == 8
    assert multi["steps_per_epoch"] == single["steps_per_epoch"]
    assert multi["replicas"] == single["replicas"] == 2
    # the processes' batches differ from the one process's, and a training model's batch losses differ by
    # up to 1.6x on this tiny set (2 steps a run failed CI so): the check is the mean loss of one unmoving
    # model over SAME_RUN_STEPS within a factor 1.5 (seen: up to 1.3); a loss summed over the processes
    # is off by 2
    means = [np.mean(_losses(info)) for info in (single, multi)]
    print("mean losses, one process and two:", means)
    assert np.isfinite(means).all() and max(means) / min(means) < 1.5, means


@pytest.mark.slow
@pytest.mark.timeout(2 * WAIT)
def test_jax_two_processes_train_like_one(rec, tmp_path):
    common = [*TINY, "--records", rec, "--fold", "0", "--set", "train.epochs=2", *SAME_RUN_STEPS]
    single_out, multi_out = str(tmp_path / "single"), str(tmp_path / "multi")
    env = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    one = _start([*common, "--out", single_out], env, str(tmp_path / "single.log"))
    assert _finish([one]) == [0], _read(tmp_path / "single.log")[-3000:]
    codes = _finish(_jax_group([*common, "--out", multi_out], tmp_path, "jax"))
    assert codes == [0, 0], _read(tmp_path / "jax0.log")[-3000:] + _read(tmp_path / "jax1.log")[-3000:]
    single = _check_run_folder(single_out, 2, 1)
    multi = _check_run_folder(multi_out, 2, 2)
    _compare(single, multi)
    _predict_loads(rec, multi_out, tmp_path)


def _kill_mid_epoch_then_resume(group, args: list[str], tmp, tag: str) -> None:
    state = os.path.join(args[args.index("--out") + 1], "fold0", "ckpt", STATE_NAME)
    procs = group(args, tmp, tag)
    deadline = time.time() + WAIT
    while not os.path.exists(state) and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.5)
    assert os.path.exists(state), _read(tmp / f"{tag}0.log")[-3000:]
    time.sleep(2)  # into the second epoch
    procs[1].send_signal(signal.SIGKILL)
    assert _finish(procs[:1], timeout=120) == [1], "the survivor must stop within the peer timeout"
    log = _read(tmp / f"{tag}0.log")
    assert "lost contact with training process 1" in log, log[-3000:]
    done = _json(state)["epoch"]
    assert done >= 1
    first_epoch_seconds = _json(state)["history"][0]["seconds"]
    codes = _finish(group(args, tmp, f"{tag}again"))
    assert codes == [0, 0], _read(tmp / f"{tag}again0.log")[-3000:]
    out = args[args.index("--out") + 1]
    info = _json(os.path.join(out, "fold0", "run.json"))
    assert info["epochs"] == 3 and info["seconds_per_epoch"][0] == first_epoch_seconds, "epoch 1 not redone"
    assert "resuming from" in _read(tmp / f"{tag}again0.log")


@pytest.mark.slow
@pytest.mark.timeout(3 * WAIT)
def test_jax_lost_process_stops_the_other_and_the_same_commands_resume(rec, tmp_path):
    args = [*TINY, "--records", rec, "--out", str(tmp_path / "run"), "--fold", "0", "--set", "train.epochs=3"]
    args += ["--set", "train.steps_per_epoch=30"]
    _kill_mid_epoch_then_resume(_jax_group, args, tmp_path, "jax")


@pytest.mark.slow
@pytest.mark.timeout(2 * WAIT)
def test_tf_two_workers_train_like_one(rec, tmp_path):
    common = [*TINY, "--records", rec, "--fold", "0", "--set", "train.epochs=2", *SAME_RUN_STEPS]
    single_out, multi_out = str(tmp_path / "single"), str(tmp_path / "multi")
    one = _start([*common, "--out", single_out, "--cpu-devices", "2"], {}, str(tmp_path / "single.log"))
    assert _finish([one]) == [0], _read(tmp_path / "single.log")[-3000:]
    codes = _finish(_tf_group([*common, "--out", multi_out], tmp_path, "tf"))
    assert codes == [0, 0], _read(tmp_path / "tf0.log")[-3000:] + _read(tmp_path / "tf1.log")[-3000:]
    single = _check_run_folder(single_out, 2, 1)
    multi = _check_run_folder(multi_out, 2, 2)
    _compare(single, multi)
    _predict_loads(rec, multi_out, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(3 * WAIT)
def test_tf_lost_worker_stops_the_other_and_the_same_commands_resume(rec, tmp_path):
    args = [*TINY, "--records", rec, "--out", str(tmp_path / "run"), "--fold", "0", "--set", "train.epochs=3"]
    args += ["--set", "train.steps_per_epoch=30"]
    _kill_mid_epoch_then_resume(_tf_group, args, tmp_path, "tf")
