"""The OpenAPI 3.1 document of errorgraph's REST endpoints, served at `GET /openapi.json`
and committed as `openapi.json` at the top of the repository.

Regenerate the committed copy after changing a dialect:

    .venv/bin/python -m app.openapi > openapi.json

(tests/test_openapi.py fails while it is stale, checks that every REST route is in it, and
drives the app through it with a schema-driven fuzzer.)

Request bodies come from the pydantic models the dialects validate with, so the document
cannot drift from what they accept; paths and methods of the Infrai capabilities come from
its route table. What has no model — the form and query parameters of Retack and
ErrorStack, the Sentry envelope, the answers — is written here from each module's
docstring, which states its contract. GraphQL (`/graphql`, described by `schema.graphql`)
and the dashboard are not REST and are not in it.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any, get_type_hints

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.config import Settings
from app.domain.event import Level
from app.services.pagination import DEFAULT_PAGE, MAX_PAGE
from app.services.retention import MAX_DAYS
from app.services.sourcemaps import MAX_SOURCE_MAP_BYTES
from rest_compat import airbrake, error_tracker, errorstack, infrai, proliferate, retack, sentry
from rest_compat.common import JSONOut

REF = "#/components/schemas/"
JSON = "application/json"
GIF = "image/gif"

Schema = dict[str, Any]


COMPRESSED = (
    "The body may be compressed (`Content-Encoding: gzip`, `deflate` or `br`, also stacked)."
)
# The level names every dialect reads (any case; `Level.parse` takes a few more aliases).
LEVELS = [level.value for level in Level] + ["warn", "critical"]
NOT_BLANK: Schema = {"type": "string", "pattern": r"\S"}


# --- Small builders -------------------------------------------------------------------


def ref(name: str) -> Schema:
    return {"$ref": REF + name}


def pref(name: str) -> Schema:
    return {"$ref": "#/components/parameters/" + name}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}
ANY_OBJECT: Schema = {"type": "object", "additionalProperties": True}


def obj(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """An object whose properties are all present unless named in `optional`."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }


def content(schema: Schema, media: str = JSON) -> dict[str, Any]:
    return {media: {"schema": schema}}


def response(description: str, schema: Schema | None = None, **extra: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = content(schema)
    answer.update(extra)
    return answer


def param(
    name: str, where: str, schema: Schema, description: str, *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }


def _renamed(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            key: REF + names[item.removeprefix(REF)]
            if key == "$ref" and isinstance(item, str) and item.startswith(REF)
            else _renamed(item, names)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_renamed(item, names) for item in value]
    return value


def model_schemas(prefix: str, models: list[type[BaseModel]]) -> dict[str, Schema]:
    """The JSON schemas pydantic validates `models` with, named `<prefix><Model>` so that
    two dialects' models of the same name cannot collide."""
    _, top = models_json_schema(
        [(model, "validation") for model in models], ref_template=REF + "{model}"
    )
    defs: dict[str, Schema] = top.get("$defs", {})
    names = {name: name if name.startswith(prefix) else prefix + name for name in defs}
    return {names[name]: _renamed(schema, names) for name, schema in defs.items()}


def typed_dict_schema(kind: Any) -> Schema:
    """A response shape the dialect declares as a TypedDict (key by key: pydantic takes
    only `typing_extensions.TypedDict` whole before Python 3.12)."""
    return {
        "type": "object",
        "properties": {
            name: TypeAdapter(hint).json_schema() for name, hint in get_type_hints(kind).items()
        },
        "required": [name for name in get_type_hints(kind) if name in kind.__required_keys__],
    }


# --- Shared pieces --------------------------------------------------------------------

RETRY_AFTER = {"$ref": "#/components/headers/RetryAfter"}

STATUS_TEXT = {
    400: "Input that cannot be read: the answer names the field",
    401: "No key, or an unknown or revoked key",
    403: "The key may not do this: it lacks the scope, or belongs to another project",
    404: "No such thing in the key's project",
    408: (
        "The body stopped arriving: after `BODY_GRACE_SECONDS`, fewer than "
        "`BODY_MIN_BYTES_PER_SECOND` came a second; the connection is closed"
    ),
    413: "The body (or its decompressed form, or the batch) is over the limit",
    415: "A body in a media type this endpoint does not read",
    422: "The body or a parameter does not match the schema: `detail` items name it",
    429: "Over the project's event quota: retry after `Retry-After` seconds",
    503: "The server cannot store now: retry after `Retry-After` seconds",
}


def errors(shape: str, *statuses: int) -> dict[str, Any]:
    """References to the error answers of one shape (see `error_responses`)."""
    return {str(status): {"$ref": f"#/components/responses/{shape}{status}"} for status in statuses}


def error_response(shape: str, status: int) -> dict[str, Any]:
    """The answer `errors(shape, status)` refers to; 429 and 503 carry `Retry-After`."""
    headers: dict[str, Any] = {"Retry-After": RETRY_AFTER} if status in (429, 503) else {}
    if shape == "ErrorStack":
        # A GIF unless `_r=json`, so that an <img> beacon never shows a broken image.
        return {
            "description": STATUS_TEXT[status] + " (a GIF unless `_r=json`)",
            "headers": {
                "X-Error-Reason": {
                    "description": "Why, since a GIF cannot say it",
                    "schema": STRING,
                },
                "Cache-Control": {"description": "Never cached", "schema": STRING},
                **headers,
            },
            "content": {GIF: {"schema": STRING}, JSON: {"schema": ref("ErrorStackError")}},
        }
    if shape == "AirbrakeRefusal" and status == 429:
        headers["X-RateLimit-Delay"] = {
            "description": "Seconds to wait (airbrake-ruby reads it)",
            "schema": {"type": "integer", "minimum": 0},
        }
    if shape == "Sentry":
        if status == 429:
            headers["X-Sentry-Rate-Limits"] = {
                "description": "`retry_after:categories:scope:reason_code` (develop.sentry.dev, "
                '"Rate Limiting")',
                "schema": STRING,
            }
        shape = "Detail"
    schema = ref("ValidationErrors") if status == 422 else ref(shape)
    return response(STATUS_TEXT[status], schema, **({"headers": headers} if headers else {}))


def error_responses(document: Any) -> dict[str, Any]:
    """Every error answer the document refers to, by name (`Detail404`)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            target = value.get("$ref")
            if isinstance(target, str) and target.startswith("#/components/responses/"):
                found.add(target.removeprefix("#/components/responses/"))
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(document)
    return {name: error_response(name[:-3], int(name[-3:])) for name in sorted(found)}


DETAIL = ref("Detail")

COMMON_SCHEMAS: dict[str, Schema] = {
    "Detail": {
        **obj({"detail": STRING}),
        "description": "errorgraph's error answer (FastAPI's shape): what went wrong, in words.",
    },
    "ValidationErrors": {
        **obj(
            {
                "detail": {
                    "type": "array",
                    "items": obj(
                        {
                            "type": STRING,
                            "loc": {
                                "type": "array",
                                "items": {"type": ["string", "integer"]},
                            },
                            "msg": STRING,
                        }
                    ),
                }
            }
        ),
        "description": "Schema errors, one item per problem; `loc` is where: "
        '`["body", "exception", "type"]`.',
    },
    "HealthOk": obj({"status": {"const": "ok"}}),
    "HealthUnavailable": obj({"status": {"const": "unavailable"}, "reason": STRING}),
}

SECURITY_SCHEMES: dict[str, Any] = {
    "ProjectKeyBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <key>`: a project key (`pk_…` ingest, `sk_…` "
        "read and write) for Infrai and the Sentry protocol; a project key with `read` or "
        "an API token (`egt_…`) for export downloads.",
    },
    "EnvKey": {
        "type": "apiKey",
        "in": "header",
        "name": "ENV-KEY",
        "description": "Retack: a project key (`ENV_KEY` is read too).",
    },
    "ApiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "Error Tracker: a project key, or the server-wide `API_KEY` "
        "(`ERRORGRAPH_API_KEY`), which reports to the project the body names and reads "
        "every project.",
    },
    "StackKey": {
        "type": "apiKey",
        "in": "query",
        "name": "_s",
        "description": "ErrorStack's stack key: a project key, in the query string or the "
        "body. `ingest` submits and logs; reading the log needs `read`.",
    },
    "SentryKey": {
        "type": "apiKey",
        "in": "query",
        "name": "sentry_key",
        "description": "The Sentry protocol: the DSN's public key (a project key).",
    },
    "AirbrakeKey": {
        "type": "apiKey",
        "in": "query",
        "name": "key",
        "description": "Airbrake and Errbit: the project key (`project_key` of the notifier), "
        "or `Authorization: Bearer <key>`; both must be the same key when both are sent.",
    },
    "MetricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "`/metrics`, when `ERRORGRAPH_METRICS_TOKEN` is set: that token.",
    },
    "SourceMapKey": {
        "type": "apiKey",
        "in": "query",
        "name": "api_key",
        "description": "Source maps: a project key (also as the upload's `api_key` field, or "
        "`Authorization: Bearer`); uploading and deleting need `write`, listing `read`.",
    },
    "SentryAuth": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Sentry-Auth",
        "description": "`Sentry sentry_key=<key>, sentry_version=7, sentry_client=<sdk>` "
        "(also accepted in `Authorization`, as are `DSN <dsn>` and `Bearer <key>`).",
    },
}


# --- Server: health, export downloads, this document ----------------------------------


def _health(operation_id: str) -> dict[str, Any]:
    return {
        "get": {
            "tags": ["Server"],
            "operationId": operation_id,
            "summary": "Readiness: the database answers",
            "security": [],
            "responses": {
                "200": response("Ready", ref("HealthOk")),
                "503": response("The database does not answer", ref("HealthUnavailable")),
            },
        }
    }


def server_paths() -> dict[str, Any]:
    return {
        "/health": _health("health"),
        "/health/ready": _health("healthReady"),
        "/health/live": {
            "get": {
                "tags": ["Server"],
                "operationId": "healthLive",
                "summary": "Liveness: the process answers",
                "security": [],
                "responses": {"200": response("Alive", ref("HealthOk"))},
            }
        },
        "/export/{export_id}": {
            "get": {
                "tags": ["Server"],
                "operationId": "downloadExport",
                "summary": "Every row of an export, streamed",
                "description": "An export made by the GraphQL `exportEvents` mutation or "
                "Infrai's `export` (its `download_url`). Needs a credential that can read "
                "what the export covers; rows outside the caller's projects are left out.",
                "security": [{"ProjectKeyBearer": []}],
                "parameters": [
                    param("export_id", "path", STRING, "The export's id, from its download URL")
                ],
                "responses": {
                    "200": {
                        "description": "The rows: a JSON array of events, or CSV text",
                        "headers": {
                            "Content-Disposition": {
                                "description": 'attachment; filename="errorgraph-<id>.json"',
                                "schema": STRING,
                            }
                        },
                        "content": {
                            JSON: {"schema": {"type": "array", "items": ANY_OBJECT}},
                            "text/csv": {"schema": STRING},
                        },
                    },
                    **errors("Detail", 401, 403, 404),
                },
            }
        },
        "/metrics": {
            "get": {
                "tags": ["Server"],
                "operationId": "metrics",
                "summary": "Prometheus metrics of this process",
                "description": "The text exposition format, or OpenMetrics when `Accept` asks "
                "for it. Open unless `ERRORGRAPH_METRICS_TOKEN` is set: then it needs "
                "`Authorization: Bearer <that token>`.",
                "security": [{}, {"MetricsToken": []}],
                "responses": {
                    "200": {
                        "description": "The metrics",
                        "content": {
                            "text/plain": {"schema": STRING},
                            "application/openmetrics-text": {"schema": STRING},
                        },
                    },
                    **errors("Detail", 401),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["Server"],
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": response("The OpenAPI 3.1 document", ANY_OBJECT)},
            }
        },
    }


# --- Proliferate ----------------------------------------------------------------------


def proliferate_paths() -> tuple[dict[str, Any], dict[str, Schema]]:
    schemas = model_schemas("Proliferate", [proliferate.ProliferateEvent])
    event = schemas["ProliferateEvent"]
    event["properties"]["level"]["enum"] = LEVELS
    # The model's cross-field rules (`ProliferateEvent._payload_for_type`).
    named = {"type": "string", "minLength": 1}
    event["allOf"] = [
        {
            "if": {"properties": {"type": {"const": "exception"}}, "required": ["type"]},
            "then": {
                "required": ["exception"],
                "properties": {
                    "exception": {
                        "type": "object",
                        "anyOf": [
                            {"required": ["type"], "properties": {"type": named}},
                            {"required": ["message"], "properties": {"message": named}},
                        ],
                    }
                },
            },
        },
        {
            "if": {"properties": {"type": {"const": "message"}}, "required": ["type"]},
            "then": {"required": ["message"], "properties": {"message": named}},
        },
    ]
    event["description"] = (
        "One event. `exception` (with a type or a message) is required when `type` is "
        "`exception`, `message` when it is `message`; `level` is error by default."
    )
    schemas["ProliferateBatchResult"] = {
        **typed_dict_schema(proliferate.BatchResult),
        "required": ["event_id", "status"],
        "description": "`reason` says why an event was rejected",
    }
    max_batch = Settings.model_fields["max_batch_events"].default
    key_note = (
        "The project key travels in the body (`api_key`, an ingest key `pk_…`), so there is "
        "no header to set. Answers CORS preflights for any origin."
    )
    paths = {
        "/api/v1/errors": {
            "post": {
                "tags": ["Proliferate"],
                "operationId": "proliferateIngest",
                "summary": "Ingest one event",
                "description": key_note + " Answers once the event is committed.",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": content(ref("ProliferateEvent")),
                },
                "responses": {
                    "202": response("Stored", obj({"event_id": STRING})),
                    **errors("Detail", 400, 401, 403, 413, 422, 429, 503),
                },
            }
        },
        "/api/v1/errors/batch": {
            "post": {
                "tags": ["Proliferate"],
                "operationId": "proliferateIngestBatch",
                "summary": f"Ingest up to {max_batch} events",
                "description": key_note + " Each event is checked on its own (schema and "
                "`api_key`): the answer lists `ok` or `rejected` with a reason per event, in "
                "the order sent. When nothing could be stored because the server cannot "
                "store now, the answer is 429 or 503 for the whole batch. The limit is "
                "`ERRORGRAPH_MAX_BATCH_EVENTS`.",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": content(
                        {
                            "type": "array",
                            "items": ref("ProliferateEvent"),
                            "minItems": 1,
                            "maxItems": max_batch,
                        }
                    ),
                },
                "responses": {
                    "202": response(
                        "Processed (some events may be rejected)",
                        obj(
                            {
                                "processed": INTEGER,
                                "results": {
                                    "type": "array",
                                    "items": ref("ProliferateBatchResult"),
                                },
                            }
                        ),
                    ),
                    **errors("Detail", 400, 413, 422, 429, 503),
                },
            }
        },
    }
    return paths, schemas


# --- Retack ---------------------------------------------------------------------------

RETACK_PARAMETERS = {
    "title": "Title of the error.",
    "stack_trace": "Stack trace of the error; parsed into frames.",
}


def retack_paths() -> tuple[dict[str, Any], dict[str, Schema]]:
    fields = {
        name: {**NOT_BLANK, "description": RETACK_PARAMETERS[name]} for name in retack.REQUIRED
    }
    form = {
        "type": "object",
        "properties": fields,
        "required": list(retack.REQUIRED),
        "additionalProperties": STRING,
    }
    schemas = {
        "RetackForm": form,
        "RetackParameters": {
            **form,
            "additionalProperties": True,
            "description": "`title` and `stack_trace` (required, from here or the query "
            "string); any other parameter is kept in the event's `extra`.",
        },
        "RetackFieldErrors": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": STRING},
            "description": 'Per parameter: `{"title": ["This field is required."]}`.',
        },
    }
    operation = {
        "tags": ["Retack"],
        "operationId": "retackErrorLog",
        "summary": "Post an error",
        "description": "Parameters come from the query string, a form body or a JSON body; "
        "the query string wins when both carry one. `title` and `stack_trace` are "
        "required from either place. The user context becomes the event's affected user. "
        "Also served without the trailing slash; answers CORS preflights for any origin.",
        "security": [{"EnvKey": []}],
        "parameters": [
            param(
                "HTTP_X_USER_CONTEXT",
                "header",
                NOT_BLANK,
                "A unique identifier of the user or device that experienced the error "
                "(an IP address, a username, a session id). `X-User-Context` is read too.",
                required=True,
            ),
            *(
                param(name, "query", STRING, RETACK_PARAMETERS[name] + " Wins over the body's.")
                for name in retack.REQUIRED
            ),
        ],
        "requestBody": {
            "required": False,
            "content": {
                JSON: {"schema": ref("RetackParameters")},
                "application/x-www-form-urlencoded": {"schema": ref("RetackForm")},
                "multipart/form-data": {"schema": ref("RetackForm")},
                "text/plain": {
                    "schema": {
                        "type": "string",
                        "description": "A JSON object as text, as `navigator.sendBeacon` sends it",
                    }
                },
            },
        },
        "responses": {
            "200": response("Stored", obj({"status": {"const": "ok"}, "event_id": STRING})),
            "400": {
                "description": "No user context header, a body that cannot be read (`detail`), "
                "or a parameter missing, blank or not text (per-parameter lists)",
                "content": content({"anyOf": [DETAIL, ref("RetackFieldErrors")]}),
            },
            **errors("Detail", 401, 403, 413, 415, 429, 503),
        },
    }
    return {"/observe/error-log/": {"post": operation}}, schemas


# --- ErrorStack -----------------------------------------------------------------------

ERRORSTACK_FIELDS = {
    "Msg": "The error message (a browser's `onerror` text: `Uncaught TypeError: x`).",
    "URL": "The page or resource where it happened.",
    "Line": "The line number (kept in `extra`).",
    "Platform": "`navigator.platform` (the event's OS).",
    "UserAgent": "The browser's user agent (else the request's `User-Agent`).",
    "name": "Python logging: the logger name.",
    "msg": "Python logging: the unformatted message.",
    "levelname": "Python logging: the level (`CRITICAL` is fatal).",
    "module": "Python logging: the module.",
    "pathname": "Python logging: the source file.",
    "funcName": "Python logging: the function.",
    "lineno": "Python logging: the line number.",
    "exc_text": "Python logging: the formatted traceback (parsed into frames).",
    "created": "Python logging: the record's Unix time (the event's timestamp).",
}


def errorstack_fields() -> dict[str, str]:
    """The fields mapped onto the event: the documented ones, and every name the module
    reads a message or a stack trace from."""
    fields = dict(ERRORSTACK_FIELDS)
    for name in errorstack.MESSAGE_FIELDS:
        fields.setdefault(name, "The message (a Python record's is grouped on as sent).")
    for name in errorstack.STACK_FIELDS:
        fields.setdefault(name, "A stack trace (parsed into frames).")
    return fields


def errorstack_parameters() -> dict[str, Any]:
    answer = param(
        "_r",
        "query",
        {"type": "string", "enum": ["json", "img"]},
        "`json` answers JSON; `img` (the default, and any other value) a 1-pixel transparent GIF.",
    )
    fields = {
        f"ErrorStack_{name}": param(name, "query", STRING, text)
        for name, text in errorstack_fields().items()
    }
    return {"ErrorStack__r": answer, **fields}


def errorstack_paths() -> tuple[dict[str, Any], dict[str, Schema]]:
    form = {
        "type": "object",
        "properties": {
            "_s": {"type": "string", "description": "The stack key (or in the query string)."},
            "_r": {
                "type": "string",
                "description": "`json` answers JSON; anything else (default `img`) a 1-pixel GIF.",
            },
            **{
                name: {"type": "string", "description": text}
                for name, text in errorstack_fields().items()
            },
        },
        "additionalProperties": STRING,
        "description": "Any fields; the ones listed are mapped onto the event (names match "
        "in any case) and every field is kept in `extra`. Names starting with `_` steer the "
        "request and are not stored.",
    }
    schemas = {
        "ErrorStackForm": form,
        "ErrorStackFields": {**form, "additionalProperties": True},
        "ErrorStackOk": obj(
            {"status": {"const": "ok"}, "event_id": STRING}, optional=("event_id",)
        ),
        "ErrorStackError": obj(
            {"status": {"const": "error"}, "detail": STRING, "field": STRING},
            optional=("field",),
        ),
        "ErrorStackLog": obj(
            {
                "messages": {
                    "type": "array",
                    "items": obj(
                        {
                            "created_at": STRING,
                            "level": nullable(STRING),
                            "message": STRING,
                            "data": ANY_OBJECT,
                        }
                    ),
                }
            }
        ),
    }
    parameters = [pref(name) for name in errorstack_parameters()]
    body = {
        "required": False,
        "content": {
            "application/x-www-form-urlencoded": {"schema": ref("ErrorStackForm")},
            "multipart/form-data": {"schema": ref("ErrorStackForm")},
            JSON: {"schema": ref("ErrorStackFields")},
            "text/plain": {"schema": {"type": "string", "description": "A JSON object as text"}},
        },
    }

    def operation(name: str, method: str, summary: str, description: str, ok: Schema) -> Any:
        spec: dict[str, Any] = {
            "tags": ["ErrorStack"],
            "operationId": f"errorstack{name}{method.title()}",
            "summary": summary,
            "description": description + " Parameters come from the query string and, on "
            "POST, the body; the query string wins. Answers CORS preflights for any origin.",
            "security": [{"StackKey": []}],
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "Done (a GIF unless `_r=json`)",
                    "headers": {"Cache-Control": {"description": "Never cached", "schema": STRING}},
                    "content": {GIF: {"schema": STRING}, JSON: {"schema": ok}},
                },
                **errors("ErrorStack", 400, 401, 403, 413, 415, 429, 503),
            },
        }
        if method == "post":
            spec["requestBody"] = body
        return spec

    submit = "Record an error; every field is kept with it."
    log = (
        "Keep a log message (the last 10 per project, for at most an hour). A GET with no "
        "fields lists the kept messages instead, oldest first, as JSON (needs `read`)."
    )
    paths = {
        "/submit": {
            method: operation("Submit", method, "Submit an error", submit, ref("ErrorStackOk"))
            for method in ("get", "post")
        },
        "/log": {
            method: operation(
                "Log",
                method,
                "Log a message, or list the log",
                log,
                {"anyOf": [ref("ErrorStackOk"), ref("ErrorStackLog")]}
                if method == "get"
                else ref("ErrorStackOk"),
            )
            for method in ("get", "post")
        },
    }
    return paths, schemas


# --- Sentry ---------------------------------------------------------------------------

SENTRY_LIST_INTERFACES = ("exception", "threads", "breadcrumbs")
UUID_PATTERN = (
    "^(?:[0-9a-fA-F]{32}"
    "|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)


def sentry_schemas() -> dict[str, Schema]:
    schemas = model_schemas("Sentry", [sentry.SentryEvent])
    event = schemas["SentryEvent"]["properties"]
    for name in SENTRY_LIST_INTERFACES:
        # The model unwraps these before validating: `{"values": [...]}` is the usual form.
        as_list = event[name]
        event[name] = {
            "anyOf": [as_list, obj({"values": as_list}), {"type": "null"}],
            "description": 'A list, or `{"values": [...]}`',
        }
    event["event_id"] = {
        "anyOf": [{"type": "string", "pattern": UUID_PATTERN}, {"type": "null"}],
        "description": "32 hex digits, or a dashed UUID",
    }
    event["level"] = {"anyOf": [{"type": "string", "enum": LEVELS}, {"type": "null"}]}
    event["timestamp"] = {
        "anyOf": [TIME, {"type": "number"}, {"type": "null"}],
        "description": "RFC 3339 or Unix seconds",
    }
    schemas["SentryEvent"]["description"] = (
        "The fields of a Sentry event that errorgraph reads (develop.sentry.dev, "
        '"Event Payloads"); the others are ignored. Legacy interface names '
        "(`sentry.interfaces.Exception`, …) are read as the modern ones."
    )
    return schemas


def sentry_paths() -> tuple[dict[str, Any], dict[str, Schema]]:
    project = param(
        "project_id", "path", {"type": "integer", "minimum": 0}, "The project id of the DSN"
    )
    auth = [{"SentryKey": []}, {"SentryAuth": []}, {"ProjectKeyBearer": []}]
    failures = errors("Sentry", 400, 401, 403, 404, 413, 429, 503)
    envelope_example = (
        '{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc","dsn":"http://pk_…@127.0.0.1:8000/1"}\n'
        '{"type":"event"}\n'
        '{"exception":{"values":[{"type":"ValueError","value":"bad input"}]}}\n'
    )
    envelope = {
        "tags": ["Sentry"],
        "operationId": "sentryEnvelope",
        "summary": "Send an envelope (Sentry SDKs)",
        "description": "Items of type `event` (at most one) are ingested and `client_report` "
        "items summed; other item types are accepted and skipped. The key may also be the "
        "envelope header's `dsn`. Limits: 20 MiB received, 100 MiB decompressed, 1 MiB per "
        "event. " + COMPRESSED + " Also served without the trailing slash; answers CORS "
        "preflights.",
        "security": [*auth, {}],
        "parameters": [
            project,
            param("sentry_version", "query", STRING, "The protocol version (7)"),
            param("sentry_client", "query", STRING, "The SDK's name and version"),
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/x-sentry-envelope": {
                    "schema": {"type": "string"},
                    "example": envelope_example,
                },
            },
        },
        "responses": {
            "200": response(
                "Taken: the event's id, or `{}` without an event",
                {"type": "object", "properties": {"id": STRING}},
            ),
            **failures,
        },
    }
    store_post = {
        "tags": ["Sentry"],
        "operationId": "sentryStore",
        "summary": "Store one event (older SDKs)",
        "description": "One event as JSON, or base64 of zlib-compressed JSON (Raven). "
        + COMPRESSED
        + " Also served without the trailing slash; answers CORS preflights.",
        "security": auth,
        "parameters": [project],
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": ref("SentryEvent")},
                "application/octet-stream": {
                    "schema": {"type": "string", "description": "base64 of zlib-compressed JSON"}
                },
            },
        },
        "responses": {"200": response("Stored", obj({"id": STRING})), **failures},
    }
    store_get = {
        "tags": ["Sentry"],
        "operationId": "sentryStoreBeacon",
        "summary": "Store one event from an image beacon",
        "security": auth,
        "parameters": [
            project,
            param(
                "sentry_data",
                "query",
                {"type": "string", "minLength": 1},
                "The event: JSON, or base64 of zlib-compressed JSON",
                required=True,
            ),
        ],
        "responses": {
            "200": {
                "description": "Stored: a 1-pixel transparent GIF",
                "content": {GIF: {"schema": STRING}},
            },
            **failures,
        },
    }
    paths = {
        "/api/{project_id}/envelope/": {"post": envelope},
        "/api/{project_id}/store/": {"get": store_get, "post": store_post},
    }
    return paths, sentry_schemas()


# --- Airbrake ------------------------------------------------------------------------


def airbrake_paths() -> tuple[dict[str, Any], dict[str, Schema]]:
    schemas = model_schemas("Airbrake", [airbrake.AirbrakeNotice])
    named = {"type": "string", "minLength": 1}
    # `AirbrakeNotice._something_named`: one error at least must have a type or a message.
    schemas["AirbrakeNotice"]["properties"]["errors"]["contains"] = {
        "anyOf": [
            {"required": ["type"], "properties": {"type": named}},
            {"required": ["message"], "properties": {"message": named}},
        ]
    }
    schemas["AirbrakeNotice"]["description"] = (
        'Airbrake\'s notice ("Create notice v3"): `errors` lists the error raised first and '
        "then its causes, each backtrace innermost frame first. Unknown members are ignored."
    )
    schemas["AirbrakeRefusal"] = obj({"message": STRING, "field": STRING}, optional=("field",))
    operation = {
        "tags": ["Airbrake"],
        "operationId": "airbrakeCreateNotice",
        "summary": "Create a notice (Airbrake and Errbit notifiers)",
        "description": "Any key of the project with `ingest` or `write`. "
        + COMPRESSED
        + " Answers CORS preflights for any origin.",
        "security": [{"AirbrakeKey": []}, {"ProjectKeyBearer": []}],
        "parameters": [
            param("project_id", "path", {"type": "integer", "minimum": 0}, "The project's id")
        ],
        "requestBody": {"required": True, "content": content(ref("AirbrakeNotice"))},
        "responses": {
            "201": response(
                "Stored: the event's id and a link to its issue in the dashboard",
                obj({"id": STRING, "url": STRING}),
            ),
            **errors("AirbrakeRefusal", 400, 401, 403, 413, 429, 503),
        },
    }
    return {"/api/v3/projects/{project_id}/notices": {"post": operation}}, schemas


# --- Source maps ----------------------------------------------------------------------


def sourcemaps_paths() -> tuple[dict[str, Any], dict[str, Schema]]:
    stored = obj(
        {
            "id": INTEGER,
            "release": STRING,
            "url": STRING,
            "name": nullable(STRING),
            "size": INTEGER,
            "created_at": STRING,
        }
    )
    upload = {
        "type": "object",
        "properties": {
            "sourcemap": {
                "type": "string",
                "contentMediaType": "application/json",
                "description": "The map (version 3): a file part, or a text field with its JSON",
            },
            "url": {
                "type": "string",
                "description": "The minified file as frames name it: a full URL (that URL), "
                "a path or `~/path` (that path on any host), or a file name; by default the "
                "map's `file`",
            },
            "name": {"type": "string", "description": "A label (the file's name by default)"},
            "api_key": {"type": "string", "description": "The key, when not in a header"},
        },
        "required": ["sourcemap"],
    }
    schemas = {
        "SourceMap": stored,
        "SourceMapUpload": upload,
        "SourceMapRefusal": obj({"detail": STRING, "field": STRING}, optional=("field",)),
    }
    release = param(
        "release",
        "path",
        # A line break ends the route's match: 404, from no endpoint.
        {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[^\\n]+$"},
        "The release (may contain `/`, sent as it is or as `%2F`)",
    )
    security = [{"ProjectKeyBearer": []}, {"SourceMapKey": []}]
    tags = ["Source maps"]
    refusals = ("SourceMapRefusal", 400, 401, 403)
    paths = {
        "/api/v1/releases/{release}/sourcemaps": {
            "post": {
                "tags": tags,
                "operationId": "uploadSourceMap",
                "summary": "Upload a source map for a release",
                "description": "Uploading again for the same release and `url` replaces the "
                "map (same `id`). Maps resolve the minified frames of the project's events "
                f"of that release. At most {MAX_SOURCE_MAP_BYTES // (1024 * 1024)} MiB.",
                "security": security,
                "parameters": [release],
                "requestBody": {
                    "required": True,
                    "content": {"multipart/form-data": {"schema": ref("SourceMapUpload")}},
                },
                "responses": {
                    "201": response("Stored", ref("SourceMap")),
                    **errors(*refusals, 404, 413),
                },
            },
            "get": {
                "tags": tags,
                "operationId": "listSourceMaps",
                "summary": "A release's source maps, in upload order",
                "security": security,
                "parameters": [release],
                "responses": {
                    "200": response(
                        "The maps",
                        obj(
                            {
                                "release": STRING,
                                "sourcemaps": {"type": "array", "items": ref("SourceMap")},
                            }
                        ),
                    ),
                    **errors(*refusals, 404),
                },
            },
        },
        "/api/v1/releases/{release}/sourcemaps/{map_id}": {
            "delete": {
                "tags": tags,
                "operationId": "deleteSourceMap",
                "summary": "Delete a source map",
                "security": security,
                "parameters": [
                    release,
                    param("map_id", "path", {"type": "integer", "minimum": 0}, "The map's id"),
                ],
                "responses": {
                    "204": {"description": "Deleted"},
                    **errors(*refusals, 404),
                },
            }
        },
    }
    return paths, schemas


# --- Error Tracker --------------------------------------------------------------------

ERROR_TRACKER_QUERY = {
    "project": "Only this project's errors (by name)",
    "environment": "Only errors seen in this environment",
    "resolved": "`true`: only resolved errors; `false`: every error that is not resolved",
    "search": "Words (as prefixes) of the exception type, message or stack trace",
    "source": "Only errors reported with this `source` (`browser`, `server`, …)",
    "limit": f"At most this many (default {error_tracker.DEFAULT_LIMIT}; above "
    f"{error_tracker.MAX_LIMIT} is served as {error_tracker.MAX_LIMIT})",
    "offset": "Skip this many",
}


def _non_null(schema: Schema) -> Schema:
    """A query parameter is never JSON null: drop the `null` of an optional field."""
    options = [item for item in schema.get("anyOf", []) if item != {"type": "null"}]
    base = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
    if len(options) == 1:
        base.update(options[0])
    if schema.get("default") is not None:
        base["default"] = schema["default"]
    return base


def error_tracker_paths() -> tuple[dict[str, Any], dict[str, Schema]]:
    schemas = model_schemas("ErrorTracker", [error_tracker.ErrorReport])
    report = schemas["ErrorTrackerErrorReport"]["properties"]
    # Blank after stripping is refused (`ErrorReport._not_blank`).
    report["exception_type"].update(NOT_BLANK)
    report["project"]["anyOf"][0].update(NOT_BLANK)
    schemas["ErrorTrackerSummary"] = typed_dict_schema(error_tracker.ErrorSummary)
    schemas["ErrorTrackerOccurrence"] = typed_dict_schema(error_tracker.Occurrence)
    query_schema = error_tracker.ListQuery.model_json_schema()["properties"]
    list_params = [
        param(name, "query", _non_null(schema), ERROR_TRACKER_QUERY[name])
        for name, schema in query_schema.items()
    ]
    error_id = param(
        "error_id", "path", {"type": "integer", "minimum": 1}, "The error's id (an issue id)"
    )
    security = [{"ApiKeyHeader": []}]
    tags = ["Error Tracker"]
    detail_error = obj(
        {
            "id": INTEGER,
            "fingerprint": STRING,
            "project": STRING,
            "exception_type": nullable(STRING),
            "message": STRING,
            "traceback": nullable(STRING),
            "count": INTEGER,
            "first_seen": STRING,
            "last_seen": STRING,
            "resolved": BOOLEAN,
        }
    )
    paths = {
        "/api/errors": {
            "post": {
                "tags": tags,
                "operationId": "errorTrackerReport",
                "summary": "Submit an error report",
                "description": "With the server-wide key, `project` names the project "
                "(created on first use with `location` grouping); with a project key, the "
                "report goes to the key's project. Bodies up to 256 KB, decoded within that "
                "limit. " + COMPRESSED + " Answers CORS preflights for any origin.",
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": content(ref("ErrorTrackerErrorReport")),
                },
                "responses": {
                    "201": response(
                        "A new error",
                        obj({"status": {"const": "created"}, "fingerprint": STRING, "id": INTEGER}),
                    ),
                    "200": response(
                        "A known error (a resolved one reopens)",
                        obj(
                            {
                                "status": {"const": "existing"},
                                "fingerprint": STRING,
                                "count": INTEGER,
                            }
                        ),
                    ),
                    **errors("Detail", 400, 401, 403, 413, 422, 429, 503),
                },
            },
            "get": {
                "tags": tags,
                "operationId": "errorTrackerList",
                "summary": "List errors, latest `last_seen` first",
                "security": security,
                "parameters": list_params,
                "responses": {
                    "200": response(
                        "A page of errors",
                        obj(
                            {
                                "errors": {"type": "array", "items": ref("ErrorTrackerSummary")},
                                "total": INTEGER,
                                "limit": INTEGER,
                                "offset": INTEGER,
                            }
                        ),
                    ),
                    **errors("Detail", 400, 401, 403, 422, 429, 503),
                },
            },
        },
        "/api/errors/{error_id}": {
            "get": {
                "tags": tags,
                "operationId": "errorTrackerDetail",
                "summary": "An error and its latest 5 occurrences, newest first",
                "security": security,
                "parameters": [error_id],
                "responses": {
                    "200": response(
                        "The error",
                        obj(
                            {
                                "error": detail_error,
                                "occurrences": {
                                    "type": "array",
                                    "items": ref("ErrorTrackerOccurrence"),
                                },
                            }
                        ),
                    ),
                    **errors("Detail", 400, 401, 403, 404, 429, 503),
                },
            }
        },
        "/api/errors/{error_id}/resolve": {
            "post": {
                "tags": tags,
                "operationId": "errorTrackerResolve",
                "summary": "Resolve an error (it reopens on the next occurrence)",
                "security": security,
                "parameters": [error_id],
                "responses": {
                    "200": response("Resolved", obj({"status": {"const": "resolved"}})),
                    **errors("Detail", 400, 401, 403, 404, 429, 503),
                },
            }
        },
        "/api/projects": {
            "get": {
                "tags": tags,
                "operationId": "errorTrackerProjects",
                "summary": "Names of the projects that have reported errors, sorted",
                "security": security,
                "responses": {
                    "200": response(
                        "The names", obj({"projects": {"type": "array", "items": STRING}})
                    ),
                    **errors("Detail", 400, 401, 403, 429, 503),
                },
            }
        },
    }
    return paths, schemas


# --- Infrai ---------------------------------------------------------------------------

GROUP_REF: Schema = {
    "type": ["string", "integer"],
    "description": "An error group id (a string; a number is taken too)",
}


def infrai_schemas() -> dict[str, Schema]:
    schemas = model_schemas(
        "Infrai",
        [
            infrai.CaptureIn,
            infrai.MessageIn,
            infrai.GroupRefIn,
            infrai.BulkIn,
            infrai.ExportIn,
            infrai.RetentionIn,
            infrai.FilterIn,
        ],
    )
    # Group ids are checked by a validator, not by their type (see infrai.GroupRef).
    schemas["InfraiBulkIn"]["properties"]["error_group_ids"]["items"] = GROUP_REF
    schemas["InfraiGroupRefIn"]["properties"]["error_group_id"]["anyOf"][0] = GROUP_REF
    schemas["InfraiFilterIn"]["properties"]["error_group_id"]["anyOf"][0] = GROUP_REF
    for moment in ("since", "until"):
        schemas["InfraiFilterIn"]["properties"][moment]["anyOf"][0] = {
            "anyOf": [TIME, {"type": "number"}],
            "description": "ISO 8601 time or Unix seconds",
        }
    schemas["InfraiFilterIn"]["description"] = (
        "Every key optional, all must match; an unknown key is refused (400)."
    )
    schemas["InfraiRetentionIn"]["properties"]["days"].update(
        {"minimum": 1, "maximum": MAX_DAYS, "description": "How many days events are kept"}
    )
    # `CaptureIn.names_the_error`: something must title the error.
    schemas["InfraiCaptureIn"]["anyOf"] = [
        {"required": ["message"], "properties": {"message": NOT_BLANK}},
        {
            "required": ["exception"],
            "properties": {
                "exception": {
                    "type": "object",
                    "anyOf": [
                        {"required": ["type"], "properties": {"type": NOT_BLANK}},
                        {"required": ["message"], "properties": {"message": NOT_BLANK}},
                    ],
                }
            },
        },
    ]
    frame = obj(
        {
            "filename": nullable(STRING),
            "function": nullable(STRING),
            "module": nullable(STRING),
            "lineno": nullable(INTEGER),
            "colno": nullable(INTEGER),
            "in_app": nullable(BOOLEAN),
        }
    )
    assert tuple(frame["properties"]) == infrai.FRAME_FIELDS
    maybe_text = nullable(STRING)
    schemas["InfraiError"] = obj(
        {
            "ok": {"const": False},
            "error": obj(
                {
                    "code": {
                        "type": "string",
                        "enum": sorted({*infrai.CODE_BY_ERROR.values(), "METHOD_NOT_ALLOWED"}),
                    },
                    "message": STRING,
                    "field": maybe_text,
                }
            ),
        }
    )
    schemas["InfraiErrorEvent"] = obj(
        {
            "id": STRING,
            "error_group_id": STRING,
            "timestamp": STRING,
            "received_at": STRING,
            "type": STRING,
            "level": STRING,
            "message": maybe_text,
            "code": maybe_text,
            "exception": nullable(
                obj(
                    {
                        "type": maybe_text,
                        "message": maybe_text,
                        "stacktrace": maybe_text,
                        "frames": {"type": "array", "items": frame},
                    }
                )
            ),
            "tags": {"type": "object", "additionalProperties": STRING},
            "environment": maybe_text,
            "release": maybe_text,
            "user_id": {"type": ["string", "integer", "null"]},
            "platform": maybe_text,
            "url": maybe_text,
            "extra": ANY_OBJECT,
            "source": STRING,
        }
    )
    group = {
        "id": STRING,
        "title": STRING,
        "culprit": maybe_text,
        "exception_type": maybe_text,
        "message": maybe_text,
        "level": STRING,
        "platform": maybe_text,
        "status": {"type": "string", "enum": list(infrai.STATUSES)},
        "is_regression": BOOLEAN,
        "count": INTEGER,
        "user_count": INTEGER,
        "first_seen": STRING,
        "last_seen": STRING,
        "first_release": maybe_text,
        "last_release": maybe_text,
        "resolved_at": maybe_text,
        "ignored_at": maybe_text,
    }
    schemas["InfraiErrorGroup"] = obj(group)
    seen = {
        "type": "array",
        "items": obj({"name": STRING, "count": INTEGER, "first_seen": STRING, "last_seen": STRING}),
    }
    schemas["InfraiErrorGroupDetail"] = obj(
        {
            **group,
            "latest_event": nullable(ref("InfraiErrorEvent")),
            "tags": {
                "type": "object",
                "additionalProperties": {
                    "type": "array",
                    "items": obj({"value": STRING, "count": INTEGER}),
                },
            },
            "releases": seen,
            "environments": seen,
            "histogram": {
                "type": "array",
                "items": obj({"time": STRING, "count": INTEGER}),
                "description": "Events per hour over the last 24 hours",
            },
        }
    )
    for kind in ("Event", "Group"):
        schemas[f"Infrai{kind}List"] = {
            **obj(
                {
                    "items": {"type": "array", "items": ref(f"InfraiError{kind}")},
                    "next_cursor": maybe_text,
                    "has_more": BOOLEAN,
                }
            ),
            "description": "Pass `next_cursor` back as `cursor` for the next page.",
        }
    schemas["InfraiCaptureResult"] = obj(
        {"ok": {"const": True}, "error_id": STRING, "error_group_id": STRING},
        optional=("error_group_id",),
    )
    schemas["InfraiRetention"] = obj(
        {
            "days": INTEGER,
            "auto_export_before_cleanup": BOOLEAN,
            "export_destination": maybe_text,
        }
    )
    return schemas


def infrai_parameters() -> dict[str, Any]:
    return {
        "Infrai_cursor": param("cursor", "query", STRING, "`next_cursor` of the previous page"),
        "Infrai_limit": param(
            "limit",
            "query",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
            f"Page size, {DEFAULT_PAGE} by default",
        ),
        "Infrai_filter": {
            "name": "filter",
            "in": "query",
            "required": False,
            "description": "The filter object as URL-encoded JSON: "
            "`filter=%7B%22level%22%3A%22error%22%7D`",
            "content": content(ref("InfraiFilterIn")),
        },
        "Infrai_error_group_id": param(
            "error_group_id",
            "path",
            {"type": "string", "pattern": "^[0-9]{1,10}$"},
            "The error group's id",
        ),
        "Infrai_Idempotency-Key": param(
            "Idempotency-Key",
            "header",
            {"type": "string", "minLength": 1, "maxLength": infrai.MAX_IDEMPOTENCY_KEY},
            "Used when the body has no `idempotency_key`: a repeat answers the first result "
            "and stores nothing new",
        ),
    }


def infrai_paths() -> tuple[dict[str, Any], dict[str, Schema]]:
    cursor = pref("Infrai_cursor")
    limit = pref("Infrai_limit")
    filter_param = pref("Infrai_filter")
    group_id = pref("Infrai_error_group_id")
    idempotency = pref("Infrai_Idempotency-Key")

    def body(name: str, *, required: bool = True) -> dict[str, Any]:
        return {"required": required, "content": content(ref(name))}

    # What each capability's handler takes and answers, by the handler's name.
    spec: dict[str, dict[str, Any]] = {
        "capture": {
            "summary": "Capture an error",
            "description": "The parameter table's `message`/`code`/`stack`/`tags` or the "
            "example's `exception{type, message, stacktrace}` and `level`; a message or an "
            "exception with a type or a message is required.",
            "requestBody": body("InfraiCaptureIn"),
            "parameters": [idempotency],
            "ok": ref("InfraiCaptureResult"),
            "statuses": (400, 401, 403, 413),
        },
        "message": {
            "summary": "Capture a message",
            "requestBody": body("InfraiMessageIn"),
            "parameters": [idempotency],
            "ok": ref("InfraiCaptureResult"),
            "statuses": (400, 401, 403, 413),
        },
        "list_events": {
            "summary": "List events, newest first",
            "parameters": [filter_param, cursor, limit],
            "ok": ref("InfraiEventList"),
        },
        "search_events": {
            "summary": "Search events by words",
            "parameters": [
                param(
                    "q",
                    "query",
                    {"type": "string", "pattern": "[A-Za-z0-9]"},
                    "The words (at least one letter or digit)",
                    required=True,
                ),
                filter_param,
                cursor,
                limit,
            ],
            "ok": ref("InfraiEventList"),
        },
        "get_event": {
            "summary": "One event",
            "parameters": [param("event_id", "path", STRING, "The event's id (`error_id`)")],
            "ok": ref("InfraiErrorEvent"),
            "statuses": (400, 401, 403, 404),
        },
        "list_groups": {
            "summary": "List error groups",
            "parameters": [
                param(
                    "status",
                    "query",
                    {"type": "string", "enum": list(infrai.STATUSES)},
                    "Only groups with this status",
                ),
                param(
                    "sort",
                    "query",
                    {"type": "string", "enum": list(infrai.SORTS), "default": "last_seen_desc"},
                    "The order",
                ),
                cursor,
                limit,
            ],
            "ok": ref("InfraiGroupList"),
        },
        "group_detail": {
            "summary": "A group with its latest event, tags, releases, environments, histogram",
            "parameters": [group_id],
            "ok": ref("InfraiErrorGroupDetail"),
            "statuses": (400, 401, 403, 404),
        },
        "group_events": {
            "summary": "A group's events, newest first",
            "parameters": [group_id, cursor, limit],
            "ok": ref("InfraiEventList"),
            "statuses": (400, 401, 403, 404),
        },
        "delete": {
            "summary": "Delete a group and its events",
            "parameters": [group_id],
            "ok": obj({"id": STRING, "deleted": {"const": True}}),
            "statuses": (400, 401, 403, 404),
        },
        "bulk": {
            "summary": "Resolve, unresolve, ignore or delete many groups",
            "description": "Ids that name no group of the key's project fail with "
            "`not found`; the others change.",
            "requestBody": body("InfraiBulkIn"),
            "ok": obj(
                {
                    "action": STRING,
                    "updated": {"type": "array", "items": STRING},
                    "failed": {"type": "array", "items": obj({"id": STRING, "reason": STRING})},
                }
            ),
            "statuses": (400, 401, 403, 413),
        },
        "export": {
            "summary": "Export events as JSON or CSV",
            "description": "Up to 1000 events inline; when more matched, `truncated` is true "
            "and `download_url` (GET it with the same Authorization header) streams every "
            "row. Filters on anything but `since`, `until` and `error_group_id` get no "
            "`download_url`.",
            "requestBody": body("InfraiExportIn", required=False),
            "ok": obj(
                {
                    "format": {"type": "string", "enum": ["json", "csv"]},
                    "row_count": INTEGER,
                    "truncated": BOOLEAN,
                    "content": STRING,
                    "download_url": nullable(STRING),
                    "expires_at": nullable(STRING),
                }
            ),
            "statuses": (400, 401, 403, 413),
        },
        "get_retention": {"summary": "The retention policy", "ok": ref("InfraiRetention")},
        "set_retention": {
            "summary": "Set the retention policy",
            "requestBody": body("InfraiRetentionIn"),
            "ok": ref("InfraiRetention"),
            "statuses": (400, 401, 403, 413),
        },
    }
    for name in ("resolve", "unresolve", "ignore"):
        spec[name] = {
            "summary": f"{name.title()} a group",
            "description": "The path names the group; the body the document's examples "
            "send is optional, and the path wins when they differ.",
            "parameters": [group_id],
            "requestBody": body("InfraiGroupRefIn", required=False),
            "ok": ref("InfraiErrorGroup"),
            "statuses": (400, 401, 403, 404, 413),
        }

    paths: dict[str, Any] = {}
    for route in infrai.routes:
        capability = route.app
        if not isinstance(capability, infrai.Capability):
            continue
        [method] = capability.methods - {"HEAD"}
        name = capability.handler.__name__
        entry = spec[name]
        scope = capability.scope
        operation: dict[str, Any] = {
            "tags": ["Infrai"],
            "operationId": "infrai_" + name,
            "summary": entry["summary"],
            "description": (entry.get("description", "") + f" Needs a key with `{scope}`.").strip(),
            "security": [{"ProjectKeyBearer": []}],
        }
        if entry.get("parameters"):
            operation["parameters"] = entry["parameters"]
        if "requestBody" in entry:
            operation["requestBody"] = entry["requestBody"]
        operation["responses"] = {
            "200": response("Done", entry["ok"]),
            # Every capability counts requests per client address first (429), and any
            # may find the database unavailable (503).
            **errors("InfraiError", *entry.get("statuses", (400, 401, 403)), 429, 503),
        }
        paths.setdefault(route.path, {})[method.lower()] = operation
    return paths, infrai_schemas()


# --- The document ---------------------------------------------------------------------

DESCRIPTION = """\
errorgraph takes errors over the REST APIs of several hosted trackers and the Sentry
protocol, so existing clients only change their base URL and key; every key is an
errorgraph project key (`errorgraph project create` prints them). Each dialect answers in
its own documented shape, errors included. The GraphQL API is at `/graphql`
(see `schema.graphql`).

Limits: request bodies `ERRORGRAPH_MAX_BODY_BYTES` (1 MiB; Error Tracker 256 KB; Sentry
20 MiB; GraphQL 80 MiB with write credentials), batches `ERRORGRAPH_MAX_BATCH_EVENTS`
(100). 429 and 503 carry `Retry-After`.
"""


def _package_version() -> str:
    try:
        return version("errorgraph")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


@cache
def openapi_document() -> dict[str, Any]:
    """The whole document; built once per process (it depends on code only)."""
    paths: dict[str, Any] = server_paths()
    schemas: dict[str, Schema] = dict(COMMON_SCHEMAS)
    for build in (
        proliferate_paths,
        retack_paths,
        errorstack_paths,
        sentry_paths,
        error_tracker_paths,
        infrai_paths,
        airbrake_paths,
        sourcemaps_paths,
    ):
        more_paths, more_schemas = build()
        overlap = (paths.keys() & more_paths.keys()) | (schemas.keys() & more_schemas.keys())
        assert not overlap, f"defined twice: {sorted(overlap)}"
        paths.update(more_paths)
        schemas.update(more_schemas)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "errorgraph REST API",
            "version": _package_version(),
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "Sentry", "description": "The Sentry SDK protocol"},
            {"name": "Proliferate", "description": "Proliferate's ingestion API"},
            {"name": "Retack", "description": "Retack's error-log API"},
            {"name": "Infrai", "description": "Infrai's /v1/errors module"},
            {"name": "Error Tracker", "description": "Error Tracker's API"},
            {"name": "ErrorStack", "description": "ErrorStack's submit and log API"},
            {"name": "Airbrake", "description": "Airbrake's notice API v3 (Errbit too)"},
            {"name": "Source maps", "description": "Source maps for minified JavaScript"},
            {"name": "Server", "description": "Health, metrics, export downloads, this document"},
        ],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "parameters": {**errorstack_parameters(), **infrai_parameters()},
            "securitySchemes": SECURITY_SCHEMES,
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying",
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        },
    }
    _slow_bodies(document["paths"])
    document["components"]["responses"] = error_responses(document["paths"])
    return document


def _slow_bodies(paths: dict[str, Any]) -> None:
    """Every operation that takes a body may be answered 408 before its route reads it
    (app/admission.py), in errorgraph's own shape whatever its dialect's."""
    for item in paths.values():
        for operation in item.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                responses = {**operation["responses"], **errors("Detail", 408)}
                operation["responses"] = dict(sorted(responses.items()))


def document_text() -> str:
    """The committed file's exact text."""
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"


async def openapi_json(_request: Request) -> Response:
    return JSONOut(openapi_document())


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]


if __name__ == "__main__":
    sys.stdout.write(document_text())
