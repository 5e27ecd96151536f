"""The catalogue app's start checks (serve): everything that can refuse a start, before anything is made.

Order matters: a wrong --gallery, a used port or an unusable catalogue folder is refused before the
catalogue folder is created or the database opened, so a refused start leaves nothing half-made.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import tempfile
from pathlib import Path

from tfwhale.contracts.individual_id import RULE, id_problem

logger = logging.getLogger(__name__)

LOCK_NAME = ".serve.lock"


class StartError(RuntimeError):
    """A start the app refuses, with the one line that says why and what to do."""


def check_catalogue_folder(catalogue_dir: str) -> None:
    """The folder is absent (it will be made) or a writable folder; StartError otherwise."""
    path = Path(catalogue_dir)
    if path.exists() and not path.is_dir():
        raise StartError(f"--catalogue {catalogue_dir}: is a file, not a folder; give a folder")
    parent = path if path.exists() else next(p for p in path.absolute().parents if p.exists())
    try:  # a probe, not os.access: a read-only mount refuses root too
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".tfwhale-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise StartError(
            f"--catalogue {catalogue_dir}: {parent} is read-only ({err.strerror or err}); the catalogue "
            "records every decision, so it needs a writable folder (copy it somewhere writable)"
        ) from None
    database = path / "catalogue.sqlite"
    if database.exists() and not os.access(database, os.W_OK):
        raise StartError(f"--catalogue {catalogue_dir}: {database} is read-only; make it writable")


def bind_port(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (handed to the server), or StartError when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise StartError(
                f"port {port} on {host} is already in use (another tfwhale.serve?); pick another --port"
            ) from None
        raise StartError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def lock_catalogue(catalogue_dir: str):
    """An exclusive lock on the catalogue folder for this process's life (released when it ends, also on
    kill -9); StartError when another serve holds it. Returns the open lock file: keep it referenced."""
    Path(catalogue_dir).mkdir(parents=True, exist_ok=True)
    handle = open(Path(catalogue_dir) / LOCK_NAME, "a+")  # noqa: SIM115 - held until the process ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StartError(
            f"--catalogue {catalogue_dir}: already served by {holder}; two servers on one catalogue would "
            "not see each other's registrations: stop the other one or use its page"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def report_refused_ids(individual_ids: set[str]) -> list[str]:
    """Ids an older catalogue holds that today's id rule refuses: logged once, kept working."""
    refused = sorted(i for i in individual_ids if id_problem(i))
    if refused:
        logger.warning(
            "the catalogue holds %d individual id(s) that the id rule (%s) refuses, e.g. %s: they keep "
            "working here, but build-tfrecords refuses them: rename them in an export's train.csv "
            "before building",
            len(refused), RULE, ", ".join(repr(i) for i in refused[:5]),
        )  # fmt: skip
    return refused


def open_catalogue(gallery_dir: str, catalogue_dir: str, run_dirs: list[str] | None = None):
    """(catalogue, lock) on a locked catalogue folder; StartError with one line when it cannot be opened.
    Keep the lock referenced while the catalogue is in use."""
    import sqlite3

    from tfwhale.contracts.gallery_manifest import GalleryError
    from tfwhale.contracts.run_folder import RunError
    from tfwhale.query.gallery import QueryError
    from tfwhale.serve.catalogue import Catalogue
    from tfwhale.serve.schema import SchemaError

    lock = lock_catalogue(catalogue_dir)
    try:
        return Catalogue(gallery_dir, catalogue_dir, run_dirs), lock
    except (GalleryError, QueryError, RunError, SchemaError) as err:
        lock.close()
        raise StartError(str(err)) from None
    except sqlite3.DatabaseError as err:
        lock.close()
        raise StartError(
            f"--catalogue {catalogue_dir}: its database cannot be used ({err}); restore catalogue.sqlite "
            "from a backup, or give another folder"
        ) from None
