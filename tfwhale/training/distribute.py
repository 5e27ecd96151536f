"""Where training runs: one distribution setup per process (TPU, GPUs, CPU), for the TF and JAX backends."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from tfwhale.training.cluster import DEFAULT_PEER_TIMEOUT, ClusterRequest, start_jax, tf_config_workers

logger = logging.getLogger(__name__)

_RUNTIME: Runtime | None = None
TF_COLLECTIVE_FACTOR = 6  # TF workers: one collective may wait this many peer timeouts
_REQUEST: tuple[str | None, bool, ClusterRequest] | None = None


class DeviceError(RuntimeError):
    """The requested hardware is not there."""


@dataclass(frozen=True)
class Runtime:
    """The hardware a process trains on; created once and reused for every fold (DESIGN.md pitfall)."""

    backend: str
    kind: str  # "tpu" | "gpu" | "cpu"
    replicas: int  # over every process
    strategy: Any = None  # tf.distribute.Strategy on the TF backend, else None
    process_id: int = 0  # this process among the ones training together (0 is the chief, the one writer)
    num_processes: int = 1
    peer_timeout: int = DEFAULT_PEER_TIMEOUT  # seconds before a silent peer counts as lost

    @property
    def is_writer(self) -> bool:
        """Only process 0 writes the run folder; the others compute the same values and discard theirs."""
        return self.process_id == 0

    def scope(self) -> contextlib.AbstractContextManager:
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    @property
    def precision_policy(self) -> str:
        return "mixed_bfloat16" if self.kind == "tpu" else "float32"


def split_cpu(n_devices: int) -> None:
    """Expose the CPU as n logical devices (a multi-replica proxy for TPU cores); before TF starts."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n_devices)]
        )
    except RuntimeError as err:
        if len(tf.config.list_logical_devices("CPU")) != n_devices:
            raise DeviceError(
                f"cannot split the CPU into {n_devices} devices after TF started: {err}"
            ) from err


def get_runtime(
    tpu: str | None = None, mirrored_cpu: bool = False, cluster: ClusterRequest | None = None
) -> Runtime:
    """The process-wide runtime; `tpu` is None (no TPU), "" / "local" / a TPU name; `cluster` joins this
    process to others (JAX: explicit or TPU pod slice; TensorFlow: TF_CONFIG decides)."""
    global _RUNTIME, _REQUEST
    cluster = cluster or ClusterRequest()
    if _RUNTIME is not None and (tpu, mirrored_cpu, cluster) != _REQUEST:
        raise DeviceError(
            f"this process already trains on {_RUNTIME.kind} ({_RUNTIME.replicas} replica(s)); "
            "start a new process to use other hardware"
        )
    if _RUNTIME is None:
        backend = keras.backend.backend()
        if backend == "jax":
            _RUNTIME = _jax_runtime(tpu, cluster)
        elif backend == "tensorflow":
            _RUNTIME = _tf_runtime(tpu, mirrored_cpu, cluster)
        else:
            raise DeviceError(f"KERAS_BACKEND={backend!r} is not supported; use tensorflow or jax")
        _REQUEST = (tpu, mirrored_cpu, cluster)
        logger.info(
            "training on %s (%s backend), %d replica(s) in %d process(es); this is process %d",
            _RUNTIME.kind, backend, _RUNTIME.replicas, _RUNTIME.num_processes, _RUNTIME.process_id,
        )  # fmt: skip
    return _RUNTIME


def _tf_runtime(tpu: str | None, mirrored_cpu: bool, cluster: ClusterRequest) -> Runtime:
    if cluster.explicit:
        raise DeviceError(
            "--coordinator/--num-processes/--process-id are for KERAS_BACKEND=jax; TensorFlow workers "
            "find each other through TF_CONFIG (see the README)"
        )
    workers, index = tf_config_workers()
    if workers > 1 and tpu is None:
        return _multi_worker_runtime(workers, index, cluster.peer_timeout)
    if tpu is not None:
        strategy = _connect_tpu(tpu)
        return Runtime("tensorflow", "tpu", strategy.num_replicas_in_sync, strategy)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        return Runtime("tensorflow", "gpu", strategy.num_replicas_in_sync, strategy)
    if gpus:
        return Runtime("tensorflow", "gpu", 1)
    cpus = tf.config.list_logical_devices("CPU")
    if mirrored_cpu and len(cpus) > 1:
        strategy = tf.distribute.MirroredStrategy([d.name for d in cpus])
        return Runtime("tensorflow", "cpu", strategy.num_replicas_in_sync, strategy)
    return Runtime("tensorflow", "cpu", 1)


def _multi_worker_runtime(workers: int, index: int, peer_timeout: int) -> Runtime:
    """MultiWorkerMirroredStrategy over TF_CONFIG's workers. TF's coordination service notices a dead worker
    by its heartbeats; the collective bound is a backstop for a hung one, long enough for the writer to
    upload a checkpoint while the others wait in the next step."""
    from tfwhale.training import tf_multiworker

    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=TF_COLLECTIVE_FACTOR * peer_timeout
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    tf_multiworker.patch_keras_reductions()
    kind = "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    return Runtime(
        "tensorflow", kind, strategy.num_replicas_in_sync, strategy,
        process_id=index, num_processes=workers, peer_timeout=peer_timeout,
    )  # fmt: skip


def _connect_tpu(tpu: str) -> Any:
    """TPUStrategy for a named TPU, the local TPU VM ("local"), or auto-detection ("")."""
    names = [tpu] if tpu else ["", "local"]
    errors = []
    for name in names:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as err:
            errors.append(f"{name or 'auto'}: {str(err).splitlines()[0]}")
    raise DeviceError(
        "no TPU found (" + "; ".join(errors) + "). Drop --tpu to train on the GPU/CPU of this "
        "machine; on Kaggle's TPU image use KERAS_BACKEND=jax (its TensorFlow is a CPU build)."
    )


def _jax_runtime(tpu: str | None, cluster: ClusterRequest) -> Runtime:
    import jax

    start_jax(cluster, tpu)  # before the first device query: devices then cover every process
    devices = jax.devices()
    kind = devices[0].platform
    if tpu is not None and kind != "tpu":
        raise DeviceError(f"no TPU found: JAX sees {len(devices)} {kind} device(s). Drop --tpu.")
    processes = jax.process_count()
    if len(devices) > 1:
        # several processes: each pipeline delivers its own share of a global batch (its records, by
        # process index), so Keras must not shard the dataset once more
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices, auto_shard_dataset=processes == 1)
        )
    return Runtime(
        "jax", kind if kind in {"tpu", "gpu"} else "cpu", len(devices),
        process_id=jax.process_index(), num_processes=processes, peer_timeout=cluster.peer_timeout,
    )  # fmt: skip


def current_runtime() -> Runtime | None:
    """The runtime this process set up, if any (for error handling that must know its peers)."""
    return _RUNTIME


def reset_runtime_for_tests() -> None:
    """Forget the cached runtime (tests only: real processes keep one)."""
    global _RUNTIME, _REQUEST
    _RUNTIME = _REQUEST = None
