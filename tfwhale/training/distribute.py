"""Where training runs: one distribution setup per process (TPU, GPUs, CPU), for the TF and JAX backends."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)

_RUNTIME: Runtime | None = None
_REQUEST: tuple[str | None, bool] | None = None


class DeviceError(RuntimeError):
    """The requested hardware is not there."""


@dataclass(frozen=True)
class Runtime:
    """The hardware a process trains on; created once and reused for every fold (DESIGN.md pitfall)."""

    backend: str
    kind: str  # "tpu" | "gpu" | "cpu"
    replicas: int
    strategy: Any = None  # tf.distribute.Strategy on the TF backend, else None

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


def get_runtime(tpu: str | None = None, mirrored_cpu: bool = False) -> Runtime:
    """The process-wide runtime; `tpu` is None (no TPU), "" / "local" / a TPU name."""
    global _RUNTIME, _REQUEST
    if _RUNTIME is not None and (tpu, mirrored_cpu) != _REQUEST:
        raise DeviceError(
            f"this process already trains on {_RUNTIME.kind} ({_RUNTIME.replicas} replica(s)); "
            "start a new process to use other hardware"
        )
    if _RUNTIME is None:
        backend = keras.backend.backend()
        if backend == "jax":
            _RUNTIME = _jax_runtime(tpu)
        elif backend == "tensorflow":
            _RUNTIME = _tf_runtime(tpu, mirrored_cpu)
        else:
            raise DeviceError(f"KERAS_BACKEND={backend!r} is not supported; use tensorflow or jax")
        _REQUEST = (tpu, mirrored_cpu)
        logger.info("training on %s (%s backend), %d replica(s)", _RUNTIME.kind, backend, _RUNTIME.replicas)
    return _RUNTIME


def _tf_runtime(tpu: str | None, mirrored_cpu: bool) -> Runtime:
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


def _jax_runtime(tpu: str | None) -> Runtime:
    import jax

    devices = jax.devices()
    kind = devices[0].platform
    if tpu is not None and kind != "tpu":
        raise DeviceError(f"no TPU found: JAX sees {len(devices)} {kind} device(s). Drop --tpu.")
    if len(devices) > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return Runtime("jax", kind if kind in {"tpu", "gpu"} else "cpu", len(devices))


def reset_runtime_for_tests() -> None:
    """Forget the cached runtime (tests only: real processes keep one)."""
    global _RUNTIME, _REQUEST
    _RUNTIME = _REQUEST = None
