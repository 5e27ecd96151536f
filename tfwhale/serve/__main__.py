"""python -m tfwhale.serve: run the catalogue web app on a predict output folder, or bulk-import photos.

python -m tfwhale.serve --gallery PREDICT_OUT --catalogue DIR [--host 127.0.0.1] [--port 8000]
python -m tfwhale.serve import --gallery PREDICT_OUT --catalogue DIR FOLDER [--csv CSV]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger("tfwhale.serve")
COMMAND = "python -m tfwhale.serve"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tfwhale.serve",
        description="The catalogue: identify new photos against a predict gallery in the browser, confirm "
        "or register individuals, grow the gallery without retraining, review predict's test photos, export. "
        "`python -m tfwhale.serve import --help`: bulk-import photos that already carry ids.",
    )
    add = parser.add_argument
    add("--gallery", required=True, metavar="PREDICT_OUT", help="the --out folder of a finished predict")
    add("--catalogue", required=True, metavar="DIR", help="where the catalogue lives (created if missing)")
    add("--runs", nargs="+", metavar="RUN_DIR", help="the run folders of that predict (default: as recorded)")
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    add("--port", type=int, default=8000)
    add(
        "--allowed-host", action="append", default=[], metavar="NAME",
        help="another host name browsers may use to reach the app (repeatable); requests naming any "
        "other Host are refused (DNS rebinding). Always allowed: 127.0.0.1, localhost, [::1], --host",
    )  # fmt: skip
    add("--token", help="access token required off loopback (default: a fresh one, printed at start)")
    add("--reviewer", default="", help="default reviewer name recorded with decisions")
    add(
        "--max-pixels", type=int, default=100_000_000, metavar="N",
        help="refuse uploads of more than N pixels, read from the header before decoding (100000000)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["import"]:
        from tfwhale.serve.import_cli import parse_import_args, run_import_command

        args, run = parse_import_args(argv[1:]), run_import_command
    else:
        args, run = parse_args(argv), _serve
    from tfwhale.core.extras import missing_extra_message

    try:
        return run(args)
    except ModuleNotFoundError as err:  # the serve extra (or TensorFlow) is not installed
        if (message := missing_extra_message(err, COMMAND)) is None:
            raise
        logger.error("%s", message)
        return 1


def _serve(args: argparse.Namespace) -> int:
    import fastapi  # noqa: F401 - the extra's modules, before anything is made
    import uvicorn

    from tfwhale.serve.startup import StartError, check_catalogue_folder

    try:
        check_catalogue_folder(args.catalogue)
        sock = _start_checks(args)
    except StartError as err:
        logger.error("%s", err)
        return 1
    try:
        server = uvicorn.Server(uvicorn.Config(_app(args), log_level="warning"))
    except (StartError, ModuleNotFoundError) as err:
        sock.close()
        if isinstance(err, ModuleNotFoundError):
            raise
        logger.error("%s", err)
        return 1
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn has shut down, then raises it again
        server.run(sockets=[sock])
    logger.info("stopped; the catalogue in %s keeps every decision", args.catalogue)
    return 0


def _start_checks(args: argparse.Namespace):
    """The gallery, then the port: both refused before the catalogue folder is made."""
    from tfwhale.contracts.gallery_manifest import GalleryError, load_gallery_manifest
    from tfwhale.serve.startup import StartError, bind_port

    try:
        load_gallery_manifest(args.gallery)
    except GalleryError as err:
        raise StartError(f"--gallery: {err}") from None
    return bind_port(args.host, args.port)


def _app(args: argparse.Namespace):
    """The app on an opened, locked catalogue; StartError with one line when it cannot be opened."""
    from tfwhale.serve.app import create_app
    from tfwhale.serve.security import access_token, allowed_host_names, is_loopback
    from tfwhale.serve.startup import open_catalogue, report_refused_ids

    global _LOCK  # held for the process's life
    catalogue, _LOCK = open_catalogue(args.gallery, args.catalogue, args.runs)
    report_refused_ids(catalogue.store.individual_ids())
    token = access_token(args.host, args.token)
    hosts = allowed_host_names(args.host, args.allowed_host)
    app = create_app(catalogue, token=token, reviewer=args.reviewer, hosts=hosts, port=args.port,
                     max_pixels=args.max_pixels)  # fmt: skip
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{args.port}/"
    if token is not None:
        url += f"?token={token}"
    if not is_loopback(args.host):
        print(f"tfwhale.serve: listening on {args.host}; every request needs the access token", flush=True)
        print(f"tfwhale.serve: answering requests for {', '.join(sorted(hosts))}; add the names browsers "
              "use for this machine with --allowed-host NAME", flush=True)  # fmt: skip
    print(f"tfwhale.serve: open {url}", flush=True)
    return app


_LOCK = None

if __name__ == "__main__":
    sys.exit(main())
