"""The catalogue app's corrections and inbox (serve): search any individual, undo, merge, split, the inbox.

Routes added to the app create_app builds; each JSON answer is {ok, message, ...} as /api/decide's.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ValidationError

from tfwhale.serve.bodies import MergeBody, SplitBody, UndoBody, first_error
from tfwhale.serve.catalogue import Catalogue
from tfwhale.serve.inbox import UNDECIDED, UNRESOLVED, inbox
from tfwhale.serve.metadata import SIDES, MetaError
from tfwhale.serve.metadata_store import MetaFilter
from tfwhale.serve.store import ConflictError

THUMBS = 4  # photos shown per individual in a search answer
FOUND = 20  # individuals per search answer


def add_routes(app: FastAPI, catalogue: Catalogue, reviewer: str, page: Callable[..., HTMLResponse]) -> None:
    store = catalogue.store

    @app.get("/api/individuals")
    def search(q: str = ""):
        """Individuals whose id holds `q`, each with a few photos (merged-away ones say where they went)."""
        merges = store.merges()
        found = []
        for row in store.search_individuals(q.strip()[:200], limit=FOUND + len(merges)):
            if row["id"] in merges:
                continue
            photos = [p.crop_sha256 for p in store.photos_of(row["id"])[:THUMBS]]
            found.append({"id": row["id"], "species": row["species"], "photos": photos, "n": row["n_photos"]})
        return {"ok": True, "individuals": found[:FOUND]}

    @app.post("/api/undo")
    async def undo(request: Request):
        return await _answer(request, UndoBody, lambda body: _undo(catalogue, body, reviewer))

    @app.post("/api/merge")
    async def merge(request: Request):
        def run(body: MergeBody) -> str:
            moved = catalogue.merge(body.merged, body.kept, body.reviewer or reviewer, body.note)
            return f"merged {body.merged} into {body.kept}: {len(moved)} photo(s) now answer as {body.kept}"

        return await _answer(request, MergeBody, run)

    @app.post("/api/split")
    async def split(request: Request):
        def run(body: SplitBody) -> str:
            other, who = body.other.strip(), body.reviewer or reviewer
            moved = catalogue.split(body.individual, body.photos, other, who, body.note, body.species)
            return f"split {len(moved)} photo(s) of {body.individual} off to {body.other.strip()}"

        return await _answer(request, SplitBody, run)

    @app.get("/inbox", response_class=HTMLResponse)
    def inbox_page(request: Request, tab: str = UNDECIDED):
        tab = UNRESOLVED if tab == UNRESOLVED else UNDECIDED
        try:
            wanted = MetaFilter.from_params(request.query_params)
        except MetaError as err:
            return page(request, "error.html", 400, message=f"filter: {err}")
        items = inbox(store, tab, wanted)
        return page(request, "inbox.html", tab=tab, items=items, wanted=wanted, sides=SIDES)


def _undo(catalogue: Catalogue, body: UndoBody, reviewer: str) -> str:
    row = catalogue.store.conn.execute("SELECT * FROM decisions WHERE id = ?", (body.decision,)).fetchone()
    moved = catalogue.undo(body.decision, body.reviewer or reviewer, body.note)
    what = f"{row['action']} of {row['from_individual']}" if row["action"] == "merge" else row["action"]
    return f"undid decision {body.decision} ({what}); {len(moved)} photo(s) moved back"


async def _answer(request: Request, model: type[BaseModel], run: Callable[[BaseModel], str]):
    """Validate the body, run the correction, answer {ok, message} (4xx with the reason if refused)."""
    try:
        body = model.model_validate_json(await request.body())
    except ValidationError as err:
        return JSONResponse({"ok": False, "message": first_error(err)}, status_code=422)
    try:
        message = run(body)
    except ConflictError as err:
        return JSONResponse({"ok": False, "message": str(err)}, status_code=409)
    except ValueError as err:
        return JSONResponse({"ok": False, "message": str(err)}, status_code=400)
    return {"ok": True, "message": message}
