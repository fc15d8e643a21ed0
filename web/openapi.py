"""``/openapi.json``: the routes, with schemas of the request and view
structs generated from the structs themselves, so they cannot drift."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.routing import Route

from projections.views import NodeView, QueueView, StatsView, TaskView

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
    ("GET", "/healthz"): "Health",
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


def document(app: Starlette) -> dict[str, Any]:
    from web.submit import SubmitRequest

    (submit, *_), components = msgspec.json.schema_components(
        [SubmitRequest, TaskView, NodeView, QueueView, StatsView],
        ref_template="#/components/schemas/{name}",
    )
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
            if (method, route.path) == ("POST", "/v1/tasks"):
                op["description"] = SUBMIT_DESCRIPTION
                op["requestBody"] = {"content": {"application/json": {"schema": submit}}}
                op["parameters"] = [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                        "description": "makes a retried submit safe (see 503)",
                    }
                ]
                op["responses"]["503"] = {
                    "description": "outcome unknown: the task may still run; retry "
                    "with the same Idempotency-Key",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            if (method, route.path) == ("GET", "/v1/tasks/{task_id}/result"):
                op["description"] = RESULT_DESCRIPTION
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
