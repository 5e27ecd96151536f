"""Trainer: one of several training processes (TPU pod hosts, GPU nodes, TF workers): start-up, shares, peers.

JAX: `jax.distributed` joins the processes (explicit flags, environment variables, or a TPU pod slice's own
discovery); TensorFlow: TF_CONFIG names the workers of MultiWorkerMirroredStrategy. Either way every
process runs the same command, reads its own share of the records and, when a peer dies, stops with a
message naming it instead of waiting for the job's wall-clock limit.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_PEER_TIMEOUT = 100  # seconds without a heartbeat before a peer counts as lost (jax's default)
# Keras' documented variables, then jax's own names
_ENV_COORDINATOR = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "JAX_COORDINATOR_ADDRESS")
_ENV_NUM_PROCESSES = ("KERAS_DISTRIBUTION_NUM_PROCESSES", "JAX_NUM_PROCESSES")
_ENV_PROCESS_ID = ("KERAS_DISTRIBUTION_PROCESS_ID", "JAX_PROCESS_ID")
_PEER_KEY = "tfwhale/peer/"
_peers: dict[int, str] = {}  # process id -> "host (pid N)", learnt at start-up for the lost-peer message


class ClusterError(RuntimeError):
    """The processes cannot form (or lost part of) one training job."""


@dataclass(frozen=True)
class ClusterRequest:
    """What the command line and environment ask for; all None: let JAX or TF_CONFIG decide."""

    coordinator: str | None = None  # HOST:PORT of process 0
    num_processes: int | None = None
    process_id: int | None = None
    peer_timeout: int = DEFAULT_PEER_TIMEOUT

    @property
    def explicit(self) -> bool:
        return self.coordinator is not None


def _env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def cluster_request(
    coordinator: str | None, num_processes: int | None, process_id: int | None, peer_timeout: int
) -> ClusterRequest:
    """Flags first, then the environment; a partial set is an error naming what is missing."""
    coordinator = coordinator or _env(_ENV_COORDINATOR)
    if coordinator and "," in coordinator:  # Keras' form lists every job; the first is the coordinator
        coordinator = coordinator.split(",")[0]
    num = num_processes if num_processes is not None else _env(_ENV_NUM_PROCESSES)
    pid = process_id if process_id is not None else _env(_ENV_PROCESS_ID)
    given = {"--coordinator": coordinator, "--num-processes": num, "--process-id": pid}
    if any(v is not None for v in given.values()) and not all(v is not None for v in given.values()):
        missing = ", ".join(k for k, v in given.items() if v is None)
        raise ClusterError(
            f"several processes need --coordinator, --num-processes and --process-id: {missing} missing"
        )
    if coordinator is None:
        return ClusterRequest(peer_timeout=peer_timeout)
    num, pid = int(num), int(pid)
    if not 0 <= pid < num:
        raise ClusterError(f"--process-id {pid} is outside 0..{num - 1} (--num-processes {num})")
    return ClusterRequest(coordinator, num, pid, peer_timeout)


def start_jax(request: ClusterRequest, tpu: str | None) -> None:
    """Join the other JAX processes before anything touches a device (a no-op for one process)."""
    import jax

    if request.explicit:
        if request.num_processes == 1:
            return
        kwargs: dict[str, Any] = dict(
            coordinator_address=request.coordinator, num_processes=request.num_processes,
            process_id=request.process_id,
        )  # fmt: skip
    elif tpu is not None and not os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        kwargs = {}  # a Cloud TPU VM: jax reads the slice's hosts from the TPU metadata
    else:
        return
    # CPU processes need a collectives library to compute together (tests, CPU clusters); no effect on TPU/GPU
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            **kwargs, initialization_timeout=max(60, 3 * request.peer_timeout),
            heartbeat_timeout_seconds=request.peer_timeout,
        )  # fmt: skip
    except (RuntimeError, ValueError) as err:
        if not kwargs:  # a single TPU VM that is no pod slice: train on its own devices
            logger.info(
                "no TPU pod slice detected (%s); training on this host's devices", str(err).splitlines()[0]
            )
            return
        raise ClusterError(
            f"could not join {request.num_processes} processes through {request.coordinator}: "
            f"{str(err).splitlines()[0]}. Start the same command on every host (process 0 on the "
            "coordinator's host) within the timeout."
        ) from err
    # one seed for every process (as keras.distribution.initialize does): the same initial weights everywhere
    from keras.src.backend.jax.distribution_lib import initialize_rng

    initialize_rng()
    _publish_peers()


def _publish_peers() -> None:
    """Every process tells the others where it runs, so a lost one can be named after it is gone."""
    import jax
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None or jax.process_count() == 1:
        return
    me = jax.process_index()
    client.key_value_set(f"{_PEER_KEY}{me}", f"{socket.gethostname()} (pid {os.getpid()})")
    for other in range(jax.process_count()):
        _peers[other] = client.blocking_key_value_get(f"{_PEER_KEY}{other}", 60_000)
    logger.info("process %d of %d; peers: %s", me, jax.process_count(), _peers)


def tf_config_workers() -> tuple[int, int]:
    """(number of workers, this worker's index) from TF_CONFIG; (1, 0) without one."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 1, 0
    try:
        config = json.loads(raw)
        workers = config["cluster"].get("worker", []) + config["cluster"].get("chief", [])
        task = config["task"]
        index = int(task["index"]) + (
            len(config["cluster"].get("chief", [])) if task["type"] == "worker" else 0
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ClusterError(f"TF_CONFIG is not valid ({err}): {raw[:200]}") from None
    return max(1, len(workers)), index


def gather_rows(rows: np.ndarray, runtime: Any) -> np.ndarray:
    """Every process's rows (each process passes as many), concatenated in process order, on every process."""
    if runtime.num_processes == 1:
        return rows
    if runtime.backend == "jax":
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(rows, tiled=True))
    import tensorflow as tf

    strategy = runtime.strategy
    local = tf.constant(rows)
    empty = tf.zeros([0, *rows.shape[1:]], local.dtype)  # one copy per process, not per local replica
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: local if ctx.replica_id_in_sync_group % _local_replicas(runtime) == 0 else empty
    )
    return strategy.gather(per_replica, axis=0).numpy()


def barrier(runtime: Any, name: str) -> None:
    """Every training process waits here until all arrived (a collective: a lost peer fails it)."""
    if runtime.num_processes == 1:
        return
    if runtime.backend == "jax":
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    import tensorflow as tf

    strategy = runtime.strategy
    ones = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(1.0))
    strategy.reduce("SUM", ones, axis=None)


def _local_replicas(runtime: Any) -> int:
    return max(1, runtime.replicas // runtime.num_processes)


_TF_TASK = re.compile(r"/job:(worker|chief)/(?:replica:\d+/)?task:(\d+)")


def lost_peer_message(error: BaseException, runtime: Any) -> str:
    """What to tell the user when a collective failed: which process was lost, and how to resume."""
    lost = _lost_jax_peers(runtime) if runtime.backend == "jax" else _lost_tf_peers(error, runtime)
    peers = _peers if runtime.backend == "jax" else _tf_worker_addresses()
    first_line = _telling_line(str(error)) or type(error).__name__
    if lost:
        names = ", ".join(f"process {p}" + (f" on {peers[p]}" if p in peers else "") for p in lost)
        head = f"lost contact with training {names} (of {runtime.num_processes})"
    else:
        head = f"training stopped on process {runtime.process_id} of {runtime.num_processes}"
    return (
        f"{head}: {first_line}. Every process stops; run the same command on every host again to resume "
        "from the last finished epoch."
    )


_TELLING = re.compile(r"unhealthy|heartbeat|connection|closed by peer|timed out|unavailable|aborted", re.I)


def _telling_line(text: str) -> str:
    """The error's line that says what befell the peer (TF's first line is often 'Graph execution error')."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if _TELLING.search(line)), lines[0] if lines else "")[:300]


def _tf_worker_addresses() -> dict[int, str]:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except ValueError:
        return {}
    return dict(enumerate(cluster.get("chief", []) + cluster.get("worker", [])))


def _lost_jax_peers(runtime: Any) -> list[int]:
    """Peers the coordination service no longer hears (it needs up to the heartbeat timeout to decide)."""
    from jax._src import distributed

    client = distributed.global_state.client
    everyone = list(range(runtime.num_processes))
    if client is None:
        return []
    deadline = time.time() + runtime.peer_timeout + 10
    while time.time() < deadline:
        try:
            live = set(client.get_live_nodes(everyone))
        except Exception:  # the coordination service itself (process 0) is gone
            return [0] if runtime.process_id != 0 else []
        lost = [p for p in everyone if p not in live]
        if lost:
            return lost
        time.sleep(1)
    return []


def _lost_tf_peers(error: BaseException, runtime: Any) -> list[int]:
    chiefs = len(json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("chief", []))
    found = {int(task) + (chiefs if job == "worker" else 0) for job, task in _TF_TASK.findall(str(error))}
    return sorted(found - {runtime.process_id})
