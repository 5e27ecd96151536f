"""python -m tfwhale.serve: run the catalogue web app on a predict output folder.

python -m tfwhale.serve --gallery PREDICT_OUT --catalogue DIR [--host 127.0.0.1] [--port 8000]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tfwhale.serve.security import access_token, is_loopback

logger = logging.getLogger("tfwhale.serve")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tfwhale.serve",
        description="The catalogue: identify new photos against a predict gallery in the browser, confirm "
        "or register individuals, grow the gallery without retraining, review predict's test photos, export.",
    )
    add = parser.add_argument
    add("--gallery", required=True, metavar="PREDICT_OUT", help="the --out folder of a finished predict")
    add("--catalogue", required=True, metavar="DIR", help="where the catalogue lives (created if missing)")
    add("--runs", nargs="+", metavar="RUN_DIR", help="the run folders of that predict (default: as recorded)")
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    add("--port", type=int, default=8000)
    add("--token", help="access token required off loopback (default: a fresh one, printed at start)")
    add("--reviewer", default="", help="default reviewer name recorded with decisions")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    import uvicorn

    from tfwhale.contracts.gallery_manifest import GalleryError
    from tfwhale.contracts.run_folder import RunError
    from tfwhale.query.gallery import QueryError
    from tfwhale.serve.app import create_app
    from tfwhale.serve.catalogue import Catalogue

    try:
        catalogue = Catalogue(args.gallery, args.catalogue, args.runs)
    except (GalleryError, QueryError, RunError) as err:
        logger.error("%s", err)
        return 1
    token = access_token(args.host, args.token)
    app = create_app(catalogue, token=token, reviewer=args.reviewer)
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{args.port}/"
    if token is not None:
        url += f"?token={token}"
    if not is_loopback(args.host):
        print(f"tfwhale.serve: listening on {args.host}; every request needs the access token", flush=True)
    print(f"tfwhale.serve: open {url}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
