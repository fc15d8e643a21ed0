"""``/openapi.json``: the routes, with schemas of the request and view
structs generated from the structs themselves, so they cannot drift.

The route modules name their request bodies (their ``BODIES``); the app hands
them to :func:`document`, so this module imports no route module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.routing import Route

from projections.views import NodeView, QueueView, StatsView, TaskView
from web.feed import FILTERS

__all__ = ["document"]

SUMMARIES = {
    ("POST", "/v1/tasks"): "Submit a task (JSON, or multipart with image files)",
    ("GET", "/v1/tasks"): "List tasks (filters, cursor pagination, after=<event id>)",
    ("GET", "/v1/tasks/{task_id}"): "A task's view",
    ("GET", "/v1/tasks/{task_id}/events"): "A task's events, from the log",
    ("GET", "/v1/tasks/{task_id}/result"): "The result: the image, or JSON",
    ("POST", "/v1/tasks/{task_id}/cancel"): "Ask for a task to be cancelled",
    ("POST", "/v1/tasks/{task_id}/retry"): "Submit a finished task again",
    ("GET", "/v1/stream"): "View changes as Server-Sent Events (Last-Event-ID resumes)",
    ("POST", "/v1/stream/ticket"): "A short-lived ticket for a browser's EventSource",
    ("GET", "/v1/nodes"): "Worker nodes",
    ("POST", "/v1/nodes/{node}/control"): "Send a control command and wait for the ack",
    ("GET", "/v1/queues"): "Queues",
    ("GET", "/v1/stats"): "Throughput, success rate and durations",
    ("GET", "/v1/history/tasks"): "Task history from the SQL store (filters, cursor pagination)",
    ("GET", "/v1/history/stats"): "Per minute/hour/day: throughput, failure rate, p50/p95/p99",
    ("GET", "/healthz"): "Health",
    ("GET", "/readyz"): "Readiness: 503 naming what is missing until the system can take work",
    ("GET", "/metrics"): "Prometheus metrics",
    ("POST", "/api/v1/inpaint"): "IOPaint-compatible inpaint (answers with the PNG)",
    ("POST", "/api/v1/run_plugin_gen_image"): "IOPaint-compatible plugin (RealESRGAN: upscale)",
    ("GET", "/api/v1/model"): "IOPaint-compatible: the current model",
    ("POST", "/api/v1/model"): "IOPaint-compatible: switch the model",
    ("GET", "/api/v1/server-config"): "IOPaint-compatible server configuration",
    ("GET", "/api/v1/samplers"): "IOPaint-compatible sampler names",
    ("POST", "/api/v1/samplers"): "IOPaint-compatible sampler names",
    ("POST", "/api/v1/adjust_mask"): "IOPaint-compatible: expand, shrink or reverse a mask",
}

ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    "required": ["error", "detail"],
}


SUBMIT_DESCRIPTION = (
    "A 503 means the outcome is unknown: the command may have reached the event "
    "store before the connection failed, and the task may still run when Redis "
    "is back. Send an `Idempotency-Key` header (1 to 200 characters) to retry "
    "safely: a repeat with the same key answers 200 with the first task's id. "
    "Limits (422 naming the field): run_at/delay at most 366 days ahead, "
    "timeouts at most 7 days, max_deliveries at most 1000, retry delays 0 to "
    "86400 s, JSON nested at most 32 levels, integers within 64 bits."
)
RESULT_DESCRIPTION = (
    "409 (JSON, with Retry-After) while the task has not succeeded: with curl "
    "use -f, or wait with ?after=<event_id> or the stream first."
)


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": description,
    }


STRING = {"type": "string"}
NUMBER = {"type": "number"}
FILE = {"type": "string", "format": "binary"}
# A multipart submit: the JSON fields as form fields (``params`` and ``retry``
# as JSON text), and image files, which become blobs named in ``params``.
MULTIPART_SUBMIT = {
    "type": "object",
    "properties": {
        "kind": STRING,
        "params": STRING,
        "queue": STRING,
        "priority": STRING,
        "model": STRING,
        "delay": STRING,
        "run_at": STRING,
        "max_deliveries": STRING,
        "image": FILE,
        "mask": FILE,
    },
    "required": ["kind"],
}
EVENT_ID = "a stream entry id (`<ms>-<seq>`): wait until the views include it"


def _parameters() -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Query parameters and headers per operation: what a client may send
    besides the body, so a schema-driven client (or fuzzer) reaches every branch."""
    return {
        ("GET", "/v1/tasks"): [
            _query("status", STRING, "only tasks in this status"),
            _query("queue", STRING, "only tasks of this queue"),
            _query("kind", STRING, "only tasks of this kind"),
            _query("node", STRING, "only tasks that ran on this node"),
            _query("since", NUMBER, "submitted at or after (seconds since the epoch)"),
            _query("until", NUMBER, "submitted before (seconds since the epoch)"),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "page size"),
            _query("cursor", STRING, "the next_cursor of the previous page"),
            _query("after", STRING, EVENT_ID),
        ],
        ("GET", "/v1/tasks/{task_id}"): [_query("after", STRING, EVENT_ID)],
        ("GET", "/v1/history/tasks"): [
            _query("status", STRING, "only these statuses (comma-separated)"),
            _query("kind", STRING, "only tasks of this kind"),
            _query("queue", STRING, "only tasks of this queue"),
            _query("node", STRING, "only tasks that ran on this node"),
            _query("since", NUMBER, "submitted at or after (seconds since the epoch)"),
            _query("until", NUMBER, "submitted before (seconds since the epoch)"),
            _query("error", STRING, "the error text contains this (any case)"),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size"),
            _query("cursor", STRING, "the next_cursor of the previous page"),
        ],
        ("GET", "/v1/history/stats"): [
            _query("bucket", {"type": "string", "enum": ["minute", "hour", "day"]}, "bucket width"),
            _query("kind", STRING, "only tasks of this kind"),
            _query("queue", STRING, "only tasks of this queue"),
            _query("since", NUMBER, "from this time (seconds since the epoch)"),
            _query("until", NUMBER, "before this time (seconds since the epoch)"),
        ],
        ("POST", "/v1/tasks"): [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                "description": "the same key twice submits one task: a retried submit "
                "is safe (see 503)",
            }
        ],
        ("GET", "/v1/stream"): [
            *(_query(f, STRING, f"only changes with this {f}") for f in FILTERS),
            _query("ticket", STRING, "a ticket from POST /v1/stream/ticket (browsers)"),
            _query("last_event_id", STRING, "resume after this feed id"),
            _header("Last-Event-ID", "resume after this feed id (what EventSource sends)"),
        ],
    }


def document(app: Starlette, bodies: Mapping[tuple[str, str], type]) -> dict[str, Any]:
    """The OpenAPI document of ``app``'s routes; ``bodies`` maps (method,
    path) to the struct a JSON request body decodes into."""
    (*body_schemas, _, _, _, _), components = msgspec.json.schema_components(
        [*bodies.values(), TaskView, NodeView, QueueView, StatsView],
        ref_template="#/components/schemas/{name}",
    )
    body_of = dict(zip(bodies, body_schemas))
    parameters = _parameters()
    components["Error"] = ERROR
    paths: dict[str, dict[str, Any]] = {}
    for route in app.routes:
        if not isinstance(route, Route):
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            op: dict[str, Any] = {
                "summary": SUMMARIES.get((method, route.path), route.name),
                "responses": {
                    "default": {
                        "description": "error",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    }
                },
            }
            if (body := body_of.get((method, route.path))) is not None:
                op["requestBody"] = {"content": {"application/json": {"schema": body}}}
            if (method, route.path) == ("POST", "/v1/tasks"):
                op["requestBody"]["content"]["multipart/form-data"] = {"schema": MULTIPART_SUBMIT}
                op["description"] = SUBMIT_DESCRIPTION
                op["responses"]["503"] = {
                    "description": "outcome unknown: the task may still run; retry "
                    "with the same Idempotency-Key",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            if (method, route.path) == ("GET", "/v1/tasks/{task_id}/result"):
                op["description"] = RESULT_DESCRIPTION
            path_params = [
                {"name": name, "in": "path", "required": True, "schema": STRING}
                for name in route.param_convertors
            ]
            if params := [*path_params, *parameters.get((method, route.path), [])]:
                op["parameters"] = params
            if route.path == "/v1/tasks/{task_id}" and method == "GET":
                op["responses"]["200"] = {
                    "description": "the task",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/TaskView"}}
                    },
                }
            paths.setdefault(route.path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "eventcore", "version": "1"},
        "paths": paths,
        "components": {"schemas": components},
    }
