"""Stage 2: train EfficientNet + ArcFace on the built TFRecords, one fold, all folds or the full set.

python -m tfwhale.train --config configs/tiny_cpu.yaml --records records/ --out runs/tiny --folds all
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

try:  # one line naming the extra instead of a traceback
    import keras
    import tensorflow as tf
except ModuleNotFoundError as _missing:
    from tfwhale.core.extras import exit_for_missing

    exit_for_missing(_missing, "python -m tfwhale.train")

from tfwhale.contracts import run_folder
from tfwhale.contracts.records import ManifestError, load_manifest, records_error_message
from tfwhale.core import files
from tfwhale.core.config import ConfigError, load_config, save_config
from tfwhale.feed.data import with_records_image_size
from tfwhale.nets.hub_backbone import check_hub, is_hub
from tfwhale.nets.model import check_backbone
from tfwhale.training.cluster import DEFAULT_PEER_TIMEOUT, ClusterError, cluster_request, lost_peer_message
from tfwhale.training.distribute import DeviceError, current_runtime, get_runtime, split_cpu
from tfwhale.training.fold_trainer import TrainingError, plan_fold, train_fold
from tfwhale.training.resume_check import start_fold

logger = logging.getLogger("tfwhale.train")

EXAMPLES = """examples:
  python -m tfwhale.train --config configs/tiny_cpu.yaml --records out/records --out runs/tiny --folds all
  python -m tfwhale.train --config configs/effnet_b6_768.yaml --records gs://bucket/records \\
      --out gs://bucket/runs/b6 --fold 0 --tpu
  python -m tfwhale.train --config configs/effnet_b7_768.yaml --records gs://b/rec --out gs://b/runs/b7 \\
      --full --tpu --set train.epochs=25
  # several hosts (JAX): the same command on each, with its own --process-id (0 on the coordinator)
  KERAS_BACKEND=jax python -m tfwhale.train --config configs/effnet_b6_768.yaml --records gs://b/rec \\
      --out gs://b/runs/b6 --fold 0 --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0
Run the same command again to resume an interrupted run; finished folds are skipped. A fold started on
other records or with another config is refused: --overwrite starts it over (or give a new --out). On a
TPU pod slice run it on every host (gcloud ... ssh --worker=all); TensorFlow workers are named by TF_CONFIG.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tfwhale.train",
        description="Train the embedding model (EfficientNet + GeM + ArcFace) fold by fold.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML of changes to the defaults, or a name in configs/ (tiny_cpu)")
    parser.add_argument("--records", required=True, help="folder (or gs://) written by build-tfrecords")
    parser.add_argument("--out", required=True, help="run folder (or gs://); one sub-folder per fold")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--fold", type=int, help="validate on this fold, train on the others")
    which.add_argument("--folds", help="'all' or a comma list, e.g. 0,2 (default: all)")
    which.add_argument("--full", action="store_true", help="train on every fold, no validation")
    parser.add_argument(
        "--tpu", nargs="?", const="", default=None, metavar="NAME",
        help="train on a TPU (auto-detect, 'local' on TPU VMs, or a TPU name)",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable; applied last)",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true",
        help="start the selected folds over, discarding what --out holds for them",
    )  # fmt: skip
    parser.add_argument(
        "--cpu-devices", type=int, default=0, metavar="N",
        help="split the CPU into N devices and train data-parallel over them (a multi-replica test proxy)",
    )  # fmt: skip
    hosts = parser.add_argument_group(
        "several hosts (KERAS_BACKEND=jax; TPU pod slices need none of these, TensorFlow reads TF_CONFIG)"
    )
    hosts.add_argument(
        "--coordinator", metavar="HOST:PORT", help="address of process 0, which every process can reach"
    )
    hosts.add_argument(
        "--num-processes", type=int, metavar="N", help="training processes in all (one per host)"
    )
    hosts.add_argument(
        "--process-id", type=int, metavar="I", help="this process, 0..N-1 (0 writes the run folder)"
    )
    hosts.add_argument(
        "--peer-timeout", type=int, default=DEFAULT_PEER_TIMEOUT, metavar="SECONDS",
        help=f"stop when another process is silent this long (default {DEFAULT_PEER_TIMEOUT}); TF workers: "
        "a collective may wait 6x this long (the writer uploading a checkpoint holds the others)",
    )  # fmt: skip
    return parser.parse_args(argv)


def selected_folds(args: argparse.Namespace, n_folds: int) -> list[int | None]:
    if args.full:
        return [None]
    if args.fold is not None:
        chosen = [args.fold]
    elif args.folds in (None, "all"):
        chosen = list(range(n_folds))
    else:
        chosen = [int(part) for part in args.folds.split(",") if part.strip()]
    bad = [f for f in chosen if not 0 <= f < n_folds]
    if bad:
        raise ConfigError(f"fold(s) {bad} do not exist: the records have folds 0..{n_folds - 1}")
    return chosen


def run(args: argparse.Namespace) -> list[run_folder.RunRecord]:
    cfg = load_config(args.config, args.set)
    try:
        check_backbone(cfg.model.backbone)
        if is_hub(cfg.model.backbone):
            check_hub(cfg.model.backbone)
    except (ValueError, ImportError, FileNotFoundError) as error:
        raise ConfigError(f"model.backbone: {error}") from None
    manifest = load_manifest(args.records)
    cfg = with_records_image_size(cfg, manifest)  # before any device is set up
    if args.cpu_devices > 1:
        split_cpu(args.cpu_devices)
    cluster = cluster_request(args.coordinator, args.num_processes, args.process_id, args.peer_timeout)
    runtime = get_runtime(args.tpu, mirrored_cpu=args.cpu_devices > 1, cluster=cluster)
    if runtime.kind == "tpu" and runtime.backend == "tensorflow":
        for path in (args.records, args.out):
            if not files.is_remote(path):
                raise DeviceError(f"{path}: TPU workers read and write only gs:// paths; copy it to a bucket")
    precision = cfg.train.mixed_precision
    keras.mixed_precision.set_global_policy(runtime.precision_policy if precision == "auto" else precision)
    if runtime.is_writer:
        files.makedirs(args.out)
        save_config(cfg, files.join(args.out, run_folder.CONFIG_NAME))
    results = []
    for val_fold in selected_folds(args, manifest.n_folds):
        plan = plan_fold(cfg, manifest, val_fold, args.out, runtime)
        start_fold(plan.out_dir, cfg, manifest, args.overwrite)
        if run_folder.is_finished(plan.out_dir):
            logger.info("%s already finished (%s); skipping", plan.name, plan.out_dir)
            results.append(run_folder.read_run_record(plan.out_dir))
            continue
        logger.info(
            "%s: %d steps/epoch, global batch %d (%d per process)",
            plan.name, plan.steps_per_epoch, plan.global_batch, plan.global_batch // runtime.num_processes,
        )  # fmt: skip
        results.append(train_fold(cfg, manifest, plan, runtime))
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        results = run(args)
    except (ConfigError, ManifestError, DeviceError, TrainingError, ClusterError) as err:
        logger.error("%s", err)
        return 1
    except (tf.errors.OpError, OSError) as err:
        _stop_if_a_peer_was_lost(err)  # several processes: a failed collective first means a lost peer
        if files.is_unwritable_error(err):
            logger.error("%s", files.unwritable_message(err, "--out", args.out))
            return 1
        message = records_error_message(args.records, err) if isinstance(err, tf.errors.OpError) else None
        if message is None:
            raise
        logger.error("%s", message)
        return 1
    except Exception as err:
        _stop_if_a_peer_was_lost(err)
        raise
    for record in results:
        best = record.best
        score = f"{best['val_map5']:.4f} (epoch {best['epoch']})" if "val_map5" in best else "n/a"
        logger.info("%s: %d epochs, best val MAP@5 %s", record.fold, record.epochs, score)
    return 0


def _stop_if_a_peer_was_lost(error: BaseException) -> None:
    """When one of several processes failed: name the lost peer and exit now. A normal exit would wait on
    the distributed runtime's shutdown handshake with the peer that is gone (and then abort with a trace).
    A single process returns and the error goes on as it is."""
    runtime = current_runtime()
    if runtime is None or runtime.num_processes == 1:
        return
    logger.debug("training step failed", exc_info=error)
    logger.error("%s", lost_peer_message(error, runtime))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
