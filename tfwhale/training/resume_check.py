"""Trainer: a fold folder resumes only the run it was started for (same records, same resolved config)."""

from __future__ import annotations

import logging
from typing import Any

import yaml

from tfwhale.contracts import run_folder
from tfwhale.contracts.records import Manifest
from tfwhale.core import files
from tfwhale.core.config import Config, ConfigError, config_to_dict

logger = logging.getLogger(__name__)

STARTED_NAME = "started_on.json"  # in each fold folder: the records and config it was started with
IGNORED = {("train", "verbose")}  # changes nothing the fold computes


class ResumeError(ConfigError):
    """A fold folder started on other records or with another config than this command's."""


def identity(cfg: Config, manifest: Manifest) -> dict[str, Any]:
    """What a fold folder's contents depend on: the records' manifest and the resolved config."""
    config = config_to_dict(cfg)
    for section, key in IGNORED:
        config.get(section, {}).pop(key, None)
    records = {"root": manifest.root, "manifest_sha256": manifest.sha256}
    return {"records": records, "config": config}


def _recorded(fold_dir: str) -> dict[str, Any] | None:
    """The identity a fold folder was started with; for folders from before STARTED_NAME, what its
    config.yaml and (when finished) run.json say."""
    started = files.join(fold_dir, STARTED_NAME)
    if files.exists(started):
        return files.read_json(started)
    config_path = files.join(fold_dir, run_folder.CONFIG_NAME)
    if not files.exists(config_path):
        return None
    config = yaml.safe_load(files.read_text(config_path)) or {}
    for section, key in IGNORED:
        config.get(section, {}).pop(key, None)
    records = None
    run_json = files.join(fold_dir, run_folder.RUN_JSON)
    if files.exists(run_json):
        found = files.read_json(run_json).get("records") or {}
        records = {"root": found.get("root"), "manifest_sha256": found.get("manifest_sha256")}
    return {"records": records, "config": config}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    found = []
    if old.get("records") and old["records"].get("manifest_sha256") != new["records"]["manifest_sha256"]:
        was, now = old["records"], new["records"]
        found.append(
            f"records {was.get('root')} (manifest {str(was.get('manifest_sha256'))[:12]}) -> "
            f"{now['root']} (manifest {now['manifest_sha256'][:12]})"
        )
    old_config, new_config = old.get("config") or {}, new["config"]
    for section in sorted(set(old_config) | set(new_config)):
        before, after = old_config.get(section) or {}, new_config.get(section) or {}
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                found.append(f"{section}.{key} {before.get(key)!r} -> {after.get(key)!r}")
    return found


def check_fold(fold_dir: str, cfg: Config, manifest: Manifest) -> None:
    """ResumeError naming both sides when `fold_dir` was started on other records or another config."""
    old = _recorded(fold_dir) if files.isdir(fold_dir) else None
    if old is None:
        return
    changed = _differences(old, identity(cfg, manifest))
    if changed:
        shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise ResumeError(
            f"{fold_dir} was started with other inputs than this command's: {shown}. A run resumes only "
            "with the same records and config: rerun with --overwrite to start this fold over, or give "
            "a new --out"
        )


def start_fold(fold_dir: str, cfg: Config, manifest: Manifest, overwrite: bool) -> None:
    """Before a fold trains or is skipped as finished: discard it (--overwrite), check it, record it."""
    if overwrite and files.isdir(fold_dir):
        logger.info("--overwrite: discarding %s", fold_dir)
        files.rmtree(fold_dir)
    check_fold(fold_dir, cfg, manifest)
    started = files.join(fold_dir, STARTED_NAME)
    if not files.exists(started):
        files.makedirs(fold_dir)
        files.write_json(started, identity(cfg, manifest))
