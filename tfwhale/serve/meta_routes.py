"""The catalogue app's metadata and bulk-import routes (serve): edit a photo's metadata, import photos.

POST /api/photos/{hash}/metadata (JSON: the metadata fields) saves a new version of a photo's metadata.
The Import page plans an import (POST /api/import/plan: the CSV and the file names), then sends one photo
per request (POST /api/import/photo), so it shows progress and one bad photo answers for itself only;
POST /api/import/folder imports a folder on the server's disk in one request.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tfwhale.serve import bulk_import
from tfwhale.serve.bodies import first_error, single_line
from tfwhale.serve.metadata import MetaError, check_meta
from tfwhale.serve.security import MAX_UPLOAD_BYTES
from tfwhale.serve.store import ConflictError

MAX_CSV_CHARS = 5_000_000
MAX_NAMES = 100_000


class MetadataBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    date: str = Field("", max_length=40)
    latitude: str = Field("", max_length=40)
    longitude: str = Field("", max_length=40)
    place: str = Field("", max_length=200)
    side: str = Field("", max_length=20)
    photographer: str = Field("", max_length=100)
    notes: str = Field("", max_length=2000)
    reviewer: str = Field("", max_length=100)


class PlanBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csv: str | None = Field(None, max_length=MAX_CSV_CHARS)
    csv_name: str = Field("import.csv", max_length=200)
    names: list[str] = Field(default_factory=list, max_length=MAX_NAMES)


class FolderBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    folder: str = Field(min_length=1, max_length=1000)
    csv: str = Field("", max_length=1000)  # a path on the server, relative to the folder or absolute
    reviewer: str = Field("", max_length=100)


def _refused(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"ok": False, "message": message}, status_code=status)


def _report(outcomes: list[bulk_import.Outcome]) -> dict:
    return {"ok": True, "outcomes": [asdict(o) for o in outcomes], "counts": bulk_import.counts(outcomes)}


def add_routes(app: FastAPI, catalogue, page, reviewer: str) -> None:
    """The routes on an app made by create_app; `page` renders a template as create_app's pages do."""

    @app.post("/api/photos/{digest}/metadata")
    async def edit_metadata(request: Request, digest: str):
        try:
            body = MetadataBody.model_validate_json(await request.body())
        except ValidationError as err:
            return _refused(first_error(err), 422)
        try:
            meta = check_meta(body.model_dump(exclude={"reviewer"}))
            catalogue.set_metadata(digest, meta, single_line(body.reviewer or reviewer)[:100])
        except MetaError as err:
            return _refused(str(err))
        except ConflictError as err:
            return _refused(str(err), 404)
        return {"ok": True, "message": "metadata saved", "metadata": asdict(meta)}

    @app.get("/import", response_class=HTMLResponse)
    def import_page(request: Request):
        return page(request, "import.html", max_mb=MAX_UPLOAD_BYTES >> 20)

    @app.post("/api/import/plan")
    async def import_plan(request: Request):
        try:
            body = PlanBody.model_validate_json(await request.body())
            plan = bulk_import.plan_uploads(
                dict.fromkeys(body.names, b""), body.csv, single_line(body.csv_name)
            )
        except ValidationError as err:
            return _refused(first_error(err), 422)
        except bulk_import.ImportInputError as err:
            return _refused(str(err))
        return {"ok": True, "refused": [asdict(o) for o in plan.refused], "photos": len(plan.items)}

    @app.post("/api/import/photo")
    def import_photo(
        photo: Annotated[UploadFile, File()],
        path: Annotated[str, Form()] = "",
        csv: Annotated[str, Form()] = "",
        csv_name: Annotated[str, Form()] = "import.csv",
        who: Annotated[str, Form()] = "",
    ):
        name = single_line(path or photo.filename or "upload")[:300]
        data = photo.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            return _report([bulk_import.Outcome(name, "unreadable", reason="too large")])
        try:
            plan = bulk_import.plan_uploads(
                {name: data}, csv or None, single_line(csv_name)[:200], only_sent=True
            )
        except bulk_import.ImportInputError as err:
            return _refused(str(err))
        return _report(bulk_import.run_import(catalogue, plan, single_line(who or reviewer)[:100]))

    @app.post("/api/import/folder")
    def import_folder(body: FolderBody):
        from pathlib import Path

        csv = None
        if body.csv.strip():
            csv = Path(body.folder) / body.csv.strip()  # an absolute CSV path stays itself
        try:
            plan = bulk_import.plan_folder(body.folder.strip(), csv)
        except bulk_import.ImportInputError as err:
            return _refused(str(err))
        return _report(bulk_import.run_import(catalogue, plan, single_line(body.reviewer or reviewer)[:100]))
