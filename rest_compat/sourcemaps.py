"""Source map uploads for releases: step 4 of the Proliferate document's processing
("if release is provided and source maps exist, resolve minified stack traces to
original source"), which names no endpoint; these follow its `/api/v1` style.

- `POST /api/v1/releases/{release}/sourcemaps`: `multipart/form-data` with
  - `sourcemap`: the map (a file part, or a text field holding the map's JSON);
  - `url`: the minified file's URL or name as stack frames show it: a full URL
    (`https://cdn.example.com/static/app.min.js`, that URL only), a path or Sentry's
    `~/static/app.min.js` (that path on any host), or a bare file name (`app.min.js`,
    any file of that name). Without `url`, the map's own `file` member is used;
  - `name` (optional): a label, by default the uploaded file's name;
  - `api_key` (optional): the key, when it is not sent as a header.
  Answers `201 {"id", "release", "url", "name", "size", "created_at"}`. Uploading again
  for the same release and `url` replaces the map (a new `created_at`, the same `id`).
- `GET /api/v1/releases/{release}/sourcemaps`: `200 {"release", "sourcemaps": [...]}`,
  the same objects, in upload order.
- `DELETE /api/v1/releases/{release}/sourcemaps/{id}`: `204`; 404 when the release of
  this project has no map with that id.

Authentication: a project key, as `Authorization: Bearer <key>` or as `api_key` (a form
field of the upload, or a query parameter); two different keys are refused. Uploading
and deleting need the `write` scope (the project's API key has it; the ingest key that
browsers carry does not); listing needs `read`. The key's project is the one the maps
belong to.

Errors are `{"detail": "…", "field": "…"}` (`field` when one field is at fault): 401 for
no, an unknown or a revoked key, 403 for a key without the scope, 400 for a form that
cannot be read, a missing `sourcemap` or `url`, or a file that is not a source map
(version 3, with mappings) that symbolic can read, 413 past 40 MiB per map. A release
is at most 200 characters and may contain `/` (send it as it is, or as `%2F`).

Maps apply to events of the same project and release; see `app.domain.sourcemap` for
what a resolved frame holds.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message

from app.bodies import read_body
from app.errors import ErrorgraphError, InvalidInput, InvalidKey
from app.services.keys import KeyGrant, grant_for_project_key
from app.services.sourcemaps import (
    MAX_SOURCE_MAP_BYTES,
    StoredSourceMap,
    delete_source_map,
    list_source_maps,
    store_source_map,
)
from rest_compat.common import JSONOut, error_response, media_type, runtime_of

# Room for the form's other fields and part headers around the map itself.
MAX_FORM_OVERHEAD = 64 * 1024
MAX_FORM_FIELDS = 20


def _detail(exc: ErrorgraphError) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": exc.message}
    if exc.field:
        body["field"] = exc.field
    return body


def _answer(row: StoredSourceMap) -> dict[str, Any]:
    return {
        "id": row.id,
        "release": row.release,
        "url": row.url,
        "name": row.name,
        "size": row.size,
        "created_at": row.created_at.isoformat(),
    }


def _keys(request: Request, form_key: str | None = None) -> list[tuple[str, str]]:
    """Every key the request carries, as (where, key)."""
    found: list[tuple[str, str]] = []
    kind, _, rest = request.headers.get("authorization", "").strip().partition(" ")
    if kind.lower() == "bearer" and rest.strip():
        found.append(("Authorization", rest.strip()))
    if query_key := request.query_params.get("api_key", "").strip():
        found.append(("the api_key query parameter", query_key))
    if form_key and form_key.strip():
        found.append(("the api_key field", form_key.strip()))
    return found


async def _grant(request: Request, scope: str, found: list[tuple[str, str]]) -> KeyGrant:
    if not found:
        raise InvalidKey("no key: send Authorization: Bearer <key> or api_key")
    if len({key for _, key in found}) > 1:
        raise InvalidKey(f"the keys in {found[0][0]} and {found[1][0]} differ")
    return await grant_for_project_key(
        sessions=runtime_of(request).database.sessions, secret=found[0][1], scope=scope
    )


async def _form(request: Request, body: bytes) -> FormData:
    """The multipart form of a body that was already read (and so size-checked)."""
    if media_type(request) != "multipart/form-data":
        raise InvalidInput(
            "send the source map as multipart/form-data (fields sourcemap and url)",
            field="Content-Type",
        )

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(
            max_files=MAX_FORM_FIELDS, max_fields=MAX_FORM_FIELDS, max_part_size=len(body) + 1
        )
    except MultiPartException as exc:
        raise InvalidInput(f"could not read the form: {exc.message}", field="body") from None
    except HTTPException as exc:
        raise InvalidInput(f"could not read the form: {exc.detail}", field="body") from None


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a text field, not a file", field=name)
    return value


async def _map_content(form: FormData) -> tuple[bytes, str]:
    """The map's bytes and the uploaded file's name ('' for a text field)."""
    value = form.get("sourcemap")
    if value is None:
        raise InvalidInput("the sourcemap field (the map file) is missing", field="sourcemap")
    if isinstance(value, UploadFile):
        return await value.read(), value.filename or ""
    return value.encode("utf-8"), ""


def _url_in_map(content: bytes) -> str | None:
    """The map's `file` member: the minified file it was made for."""
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    file = document.get("file") if isinstance(document, dict) else None
    return file if isinstance(file, str) and file.strip() else None


async def upload(request: Request) -> Response:
    runtime = runtime_of(request)
    sessions = runtime.database.sessions
    try:
        # A key outside the body is checked before a large body is read.
        outside = _keys(request)
        grant = await _grant(request, "write", outside) if outside else None
        body = await read_body(request, limit=MAX_SOURCE_MAP_BYTES + MAX_FORM_OVERHEAD)
        form = await _form(request, body)
        try:
            form_key = _text(form, "api_key")
            if grant is None or form_key:
                grant = await _grant(request, "write", _keys(request, form_key))
            content, filename = await _map_content(form)
            url = _text(form, "url") or _url_in_map(content)
            if not url:
                raise InvalidInput(
                    "the url field (the minified file's URL or name) is missing", field="url"
                )
            assert grant.project.id is not None
            stored = await store_source_map(
                sessions=sessions,
                project_id=grant.project.id,
                release=request.path_params["release"],
                url=url,
                content=content,
                name=_text(form, "name") or filename,
            )
        finally:
            await form.close()
    except ErrorgraphError as exc:
        return error_response(exc, _detail)
    return JSONOut(_answer(stored), status_code=201)


async def listing(request: Request) -> Response:
    try:
        grant = await _grant(request, "read", _keys(request))
        assert grant.project.id is not None
        rows = await list_source_maps(
            sessions=runtime_of(request).database.sessions,
            project_id=grant.project.id,
            release=request.path_params["release"],
        )
    except ErrorgraphError as exc:
        return error_response(exc, _detail)
    return JSONOut(
        {"release": request.path_params["release"], "sourcemaps": [_answer(row) for row in rows]}
    )


async def delete(request: Request) -> Response:
    try:
        grant = await _grant(request, "write", _keys(request))
        assert grant.project.id is not None
        await delete_source_map(
            sessions=runtime_of(request).database.sessions,
            project_id=grant.project.id,
            map_id=request.path_params["map_id"],
            release=request.path_params["release"],
        )
    except ErrorgraphError as exc:
        return error_response(exc, _detail)
    return Response(status_code=204)


routes = [
    Route("/api/v1/releases/{release:path}/sourcemaps", upload, methods=["POST"]),
    Route("/api/v1/releases/{release:path}/sourcemaps", listing, methods=["GET"]),
    Route("/api/v1/releases/{release:path}/sourcemaps/{map_id:int}", delete, methods=["DELETE"]),
]
