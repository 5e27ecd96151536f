"""The catalogue web app (serve): server-rendered pages (Jinja2, autoescaped) and the JSON/fragment API.

Every page is plain HTML; static/app.js adds drag and drop, box drawing, fetch() for decisions and the
review queue's keyboard shortcuts. No build step.
"""

from __future__ import annotations

import io
import logging
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup, escape
from pydantic import ValidationError

from tfwhale.imaging.crop_box import parse_box_text
from tfwhale.serve import export, history, meta_routes, metadata_store
from tfwhale.serve.bodies import DecideBody, first_error, single_line
from tfwhale.serve.candidates import Result
from tfwhale.serve.captions import caption_of
from tfwhale.serve.catalogue import Catalogue, UploadError
from tfwhale.serve.compare_routes import add_compare_routes
from tfwhale.serve.correct_routes import add_routes
from tfwhale.serve.inbox import inbox
from tfwhale.serve.metadata import SIDES, MetaError, check_meta
from tfwhale.serve.security import (
    MAX_UPLOAD_BYTES,
    BodyLimitMiddleware,
    GuardMiddleware,
    allowed_host_names,
)
from tfwhale.serve.store import ConflictError
from tfwhale.serve.verdict import of_result

logger = logging.getLogger(__name__)
HERE = Path(__file__).parent
MAX_PIXELS = 100_000_000  # per upload, read from the header before decoding (a 10000x10000 photo)
DECODES_AT_ONCE = 2  # each decode of a large photo holds hundreds of MB


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)  # escapes all user text
    env.filters["score"] = lambda v: "" if v is None else f"{v:.3f}"
    env.filters["urlencode"] = lambda v: quote(str(v), safe="")  # an id holding '/' stays one segment
    env.filters["scores_text"] = export.scores_text
    env.filters["when"] = readable_time
    return env


def readable_time(stamp: str | None) -> Markup:
    """A stored time ('2026-12-06T11:01:51.521+00:00') as the server's local minute ('2026-12-06 11:01'),
    in a <time> whose tooltip holds it in full; text that is not an ISO time is shown as it is."""
    if not stamp:
        return Markup("")
    try:
        parsed = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return escape(stamp)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone()  # the server's zone: the reviewers sit where it runs
    shown = parsed.strftime("%Y-%m-%d %H:%M")
    return Markup('<time datetime="{0}" title="{0}">{1}</time>').format(stamp, shown)


def create_app(
    catalogue: Catalogue,
    token: str | None = None,
    reviewer: str = "",
    hosts: frozenset[str] | None = None,
    port: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> FastAPI:
    """The app for one catalogue; token None means no access token (loopback only, see __main__).

    `hosts`: the Host names it answers (default: loopback names only); `port` names its cookies;
    `max_pixels`: larger uploads are refused from their header, before any decoding."""
    app = FastAPI(title="tfwhale catalogue", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(GuardMiddleware, token=token, hosts=hosts or allowed_host_names(""), port=port)
    app.add_middleware(BodyLimitMiddleware)  # added last: runs first, before any body is read

    @app.exception_handler(sqlite3.Error)
    @app.exception_handler(OSError)
    async def storage_failed(request: Request, err: Exception):
        logger.error("%s %s: the catalogue could not be written or read: %s", request.method,
                     request.url.path, err)  # fmt: skip
        message = f"the catalogue could not be written or read ({single_line(err)}); nothing was recorded"
        if request.url.path.startswith("/api/") and request.url.path != "/api/identify":
            return JSONResponse({"ok": False, "message": message}, status_code=503)
        return _error(message, 503)

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    env = _env()
    decode_slots = threading.BoundedSemaphore(DECODES_AT_ONCE)
    env.globals["gallery_made"] = catalogue.engine.manifest.extra  # "untrained gallery (...)" on every page
    env.globals["caption"] = lambda sha: caption_of(catalogue, sha)
    env.globals["verdict"] = of_result

    def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        context.update(csrf=request.state.csrf, reviewer=reviewer, path=request.url.path)
        return HTMLResponse(env.get_template(name).render(**context), status_code=status)

    def fragment(request: Request, photo: str, result, name: str = "", keys: bool = False) -> str:
        """One photo's candidates and its decision buttons; `keys`: label them with the review keys."""
        previous = catalogue.store.decisions(photo=photo)
        in_force = history.effective(previous)
        twins = [catalogue.store.photo(twin) for twin in sorted(catalogue.twins_of(photo))]
        return env.get_template("_result.html").render(
            photo=photo, result=result, name=name, proposed=catalogue.proposed_id(), previous=previous,
            assigned=catalogue.store.photo(photo).individual_id, keys=keys,
            last=in_force[-1] if in_force else None, twins=[t for t in twins if t is not None],
        )  # fmt: skip

    add_compare_routes(app, catalogue, page)

    @app.get("/", response_class=HTMLResponse)
    def identify_page(request: Request):
        return page(
            request, "identify.html", gallery_size=catalogue.engine.size, max_mb=MAX_UPLOAD_BYTES >> 20,
            waiting=len(inbox(catalogue.store)),
        )  # fmt: skip

    @app.post("/api/identify", response_class=HTMLResponse)
    def identify_upload(
        request: Request,
        photo: Annotated[UploadFile, File()],
        box: Annotated[str, Form()] = "",
        who: Annotated[str, Form()] = "",
        side: Annotated[str, Form()] = "",
        photographer: Annotated[str, Form()] = "",
    ):
        name = single_line(photo.filename or "upload")[:200]
        who = single_line(who)[:100]
        try:  # typed metadata; the photo's EXIF fills the rest
            meta = check_meta({"side": side, "photographer": photographer})
        except MetaError as err:
            return _error(f"{name}: {err}; nothing was stored", 400)
        data = photo.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            return _error(f"{name}: too large (over {MAX_UPLOAD_BYTES >> 20} MiB); nothing was stored", 413)
        try:
            parsed_box = parse_box_text(box) if box.strip() else None
        except ValueError as err:
            return _error(f"{name}: box {box!r}: {err}", 400)
        width, height = _image_size(data)
        if width * height > max_pixels:
            return _error(
                f"{name}: {width}x{height} is {width * height:,} pixels, over the limit of {max_pixels:,} "
                "(serve --max-pixels); nothing was stored",
                413,
            )
        try:
            with decode_slots:  # bounded: a burst of large photos cannot exhaust memory
                sha, result = catalogue.upload(data, name, parsed_box, who or reviewer, meta)
        except UploadError as err:
            return _error(f"{err}; nothing was stored", 400)
        start = time.perf_counter()
        html = fragment(request, sha, result, name)
        result.timings["render"] = time.perf_counter() - start
        timing = ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in result.timings.items())
        return HTMLResponse(html, headers={"X-Timings": timing})

    @app.post("/api/decide")
    async def decide(request: Request):
        try:
            body = DecideBody.model_validate_json(await request.body())
        except ValidationError as err:
            return JSONResponse({"ok": False, "message": first_error(err)}, status_code=422)
        try:
            decision = catalogue.decide(
                body.photo, body.action, body.individual, body.note, body.reviewer or reviewer,
                [score.model_dump() for score in body.scores], body.species,
            )  # fmt: skip
        except ConflictError as err:
            return JSONResponse({"ok": False, "message": str(err)}, status_code=409)
        except ValueError as err:
            return JSONResponse({"ok": False, "message": str(err)}, status_code=400)
        return {"ok": True, "message": _done(body), "proposed": catalogue.proposed_id(), "decision": decision}

    @app.get("/api/result/{digest}", response_class=HTMLResponse)
    def result_fragment(request: Request, digest: str, keys: bool = False):
        """A photo's section as it stands now (the page swaps it in after a decision or an undo)."""
        photo = catalogue.store.photo(digest)
        result = catalogue.result_for(digest) if photo is not None else None
        if result is None:
            return _error("no such photo with candidates in the catalogue", 404)
        return HTMLResponse(fragment(request, digest, result, photo.name, keys))

    @app.get("/blob/{digest}.jpg")
    def blob(digest: str):
        if not catalogue.blobs.has(digest):
            raise HTTPException(404, "no such image")
        headers = {"Cache-Control": "private, max-age=31536000, immutable"}
        return FileResponse(catalogue.blobs.path(digest), media_type="image/jpeg", headers=headers)

    @app.get("/review", response_class=HTMLResponse)
    def review(request: Request, at: str = ""):
        try:
            wanted = metadata_store.MetaFilter.from_params(request.query_params)
        except MetaError as err:
            return page(request, "error.html", 400, message=f"filter: {err}")
        queue = catalogue.review_queue(wanted)
        current = next((item for item in queue if item.photo == at), queue[0] if queue else None)
        html = ""
        if current is not None:
            html = fragment(request, current.photo, catalogue.result_for(current.photo), current.name, True)
        return page(
            request, "review.html", queue=queue[:200], total=len(queue), current=current, result_html=html,
            wanted=wanted, sides=SIDES, has_tests=len(catalogue.test_names) > 0,
        )  # fmt: skip

    @app.get("/individuals", response_class=HTMLResponse)
    def individuals(request: Request, q: str = ""):
        try:
            wanted = metadata_store.MetaFilter.from_params(request.query_params)
        except MetaError as err:
            return page(request, "error.html", 400, message=f"filter: {err}")
        found = catalogue.store.search_individuals(q.strip())
        if not wanted.is_empty():
            passing = metadata_store.matching_individuals(catalogue.store, wanted)
            found = [row for row in found if row["id"] in passing]
        return page(
            request, "individuals.html", q=q, found=found, wanted=wanted, sides=SIDES,
            merges=catalogue.store.merges(),
        )  # fmt: skip

    @app.get("/individuals/{individual_id:path}", response_class=HTMLResponse)
    def individual(request: Request, individual_id: str):
        row = catalogue.store.individual(individual_id)
        if row is None:
            return page(
                request, "error.html", 404, message=f"no individual {individual_id!r} in the catalogue"
            )
        photos = catalogue.store.photos_of(individual_id)
        decisions = catalogue.store.decisions(individual=individual_id)
        undoable = {row["id"] for row in history.effective(catalogue.store.decisions())}
        return page(
            request, "individual.html", ind=row, photos=photos, history=decisions, undoable=undoable,
            merged_into=catalogue.store.merges().get(individual_id), proposed=catalogue.proposed_id(),
        )  # fmt: skip

    @app.get("/photos/{digest}", response_class=HTMLResponse)
    def photo_page(request: Request, digest: str, fresh: bool = False):
        photo = catalogue.store.photo(digest)
        if photo is None:
            return page(request, "error.html", 404, message="no such photo in the catalogue")
        result = catalogue.result_for(digest, fresh)
        if result is None and photo.individual_id is not None:  # a gallery photo: correct it all the same
            result = Result([], float("nan"), np.zeros(0, np.float32))
        html = fragment(request, digest, result, photo.name) if result is not None else ""
        return page(
            request, "photo.html", photo=photo, result_html=html, sides=SIDES,
            meta=metadata_store.metadata(catalogue.store, digest),
            meta_history=metadata_store.history(catalogue.store, digest),
        )  # fmt: skip

    @app.get("/export", response_class=HTMLResponse)
    def export_page(request: Request):
        return page(request, "export.html", done=None)

    @app.post("/api/export")
    def export_run():
        done = export.export_with_report(catalogue)
        folder = done.folder.absolute()  # the server may run from anywhere: a path that works from any shell
        command = export.build_command(folder, catalogue.engine.manifest.image, done.has_boxes)
        return {"ok": True, "folder": str(folder), "command": command, "warnings": done.warnings,
                "notes": done.notes}  # fmt: skip

    meta_routes.add_routes(app, catalogue, page, reviewer)

    @app.get("/export/decisions.csv")
    def decisions_csv():
        return PlainTextResponse(
            export.decisions_csv(catalogue.store), media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="decisions.csv"'},
        )  # fmt: skip

    add_routes(app, catalogue, reviewer, page)
    return app


def _image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header, without decoding; (0, 0) when unreadable (the decode
    then gives its own message)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as image:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit here is ours
            return image.size
    except Image.DecompressionBombError:
        return MAX_PIXELS, MAX_PIXELS
    except Exception:  # not an image: catalogue.upload says which way
        return 0, 0


def _error(message: str, status: int) -> HTMLResponse:
    return HTMLResponse(f'<div class="error" role="alert">{escape(message)}</div>', status_code=status)


def _done(body: DecideBody) -> str:
    if body.action == "unresolved":
        return "left unresolved; the note is recorded"
    if body.action == "reassign":
        return f"reassigned to {body.individual.strip()}; the gallery answers with it now"
    verb = "registered" if body.action == "register" else "confirmed"
    return f"{verb} as {body.individual.strip()}; added to the gallery"
