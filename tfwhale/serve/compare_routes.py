"""The compare view's pages and API (serve): /compare (two photos side by side, synchronised zoom and
pan, the verified matches drawn over them), /api/matches (those matches as JSON) and
/compare/original/{photo} (a gallery photo's original file)."""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from tfwhale.core import files
from tfwhale.core.labels import NEW_INDIVIDUAL
from tfwhale.serve.captions import caption_of
from tfwhale.serve.catalogue import Catalogue
from tfwhale.serve.compare import CompareError, Comparer, Shown, original_media_type

_HASH = re.compile(r"^[0-9a-f]{64}$")


def _pair(comparer: Comparer, query: str, photo: str) -> tuple[Shown, Shown] | tuple[int, str]:
    """The two pictures, or (status, message) saying which argument is wrong."""
    for field, value in (("query", query), ("photo", photo)):
        if not _HASH.match(value):
            return 400, f"{field}: {value[:80]!r} is not a photo hash (64 hex digits, as in /photos/<hash>)"
    shown = []
    for field, value in (("query", query), ("photo", photo)):
        try:
            found = comparer.shown(value)
        except CompareError as err:
            return 422, f"{field}: {err}"
        if found is None:
            return 404, f"{field}: no photo {value[:12]}… in the catalogue"
        shown.append(found)
    return shown[0], shown[1]


def candidate_photos(catalogue: Catalogue, query: str) -> list[dict]:
    """The query's candidates' photos in rank order (what the view steps through with [ and ])."""
    result = catalogue.result_for(query)
    if result is None:
        return []
    found = []
    for rank, candidate in enumerate(result.candidates, 1):
        if candidate.label == NEW_INDIVIDUAL:
            continue
        for sha, similarity in candidate.photos:
            if sha is not None:
                found.append({"rank": rank, "label": candidate.label, "photo": sha, "similarity": similarity})
    return found


def add_compare_routes(app: FastAPI, catalogue: Catalogue, page: Callable[..., HTMLResponse]) -> Comparer:
    comparer = Comparer(catalogue)

    @app.get("/api/matches")
    def matches(query: str = "", photo: str = ""):
        pair = _pair(comparer, query, photo)
        if isinstance(pair[0], int):
            return JSONResponse({"ok": False, "message": pair[1]}, status_code=pair[0])
        try:
            return {"ok": True, **comparer.matches(*pair)}
        except CompareError as err:
            return JSONResponse({"ok": False, "message": str(err)}, status_code=422)

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(request: Request, query: str = "", photo: str = ""):
        pair = _pair(comparer, query, photo)
        if isinstance(pair[0], int):
            return page(request, "error.html", pair[0], message=pair[1])
        shown_query, shown_photo = pair
        steps = [c for c in candidate_photos(catalogue, query) if c["photo"] != query]
        at = next((i for i, c in enumerate(steps) if c["photo"] == photo), None)
        return page(
            request, "compare.html", query=shown_query, photo=shown_photo, steps=steps, at=at,
            query_caption=caption_of(catalogue, query), photo_caption=caption_of(catalogue, photo),
            matches_on=comparer.gallery_has_features,
        )  # fmt: skip

    @app.get("/compare/original/{digest}")
    def original(digest: str):
        photo = catalogue.store.photo(digest) if _HASH.match(digest) else None
        path = None if photo is None else comparer.original_path(photo)
        if path is None:
            return JSONResponse({"ok": False, "message": "no original file for this photo"}, status_code=404)
        headers = {"Cache-Control": "private, max-age=3600"}
        return Response(files.read_bytes(path), media_type=original_media_type(path), headers=headers)

    return comparer
