"""Errors the API answers with, and how every failure becomes a JSON response.

Two shapes, both FastAPI's:

* ``{"detail": "<sentence>"}`` for 404, 409, 413, 503... The sentence names the culprit
  (the run id, the header, the limit and the variable that raises it).
* ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`` for 422. ``loc`` is the
  path to the culprit (``["body", "workflow", "nodes", 1, "id"]``) and ``msg`` starts with
  it in dotted form, so a message read on its own still names the field.

Nothing a client sent is echoed back (FastAPI's ``input`` key is dropped: a workflow can
carry keys in ``model_args``), and server-side failures answer a fixed sentence; details
go to the log, without request bodies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import nats.errors
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from flowrelay_contracts import WorkflowProblem

log = logging.getLogger(__name__)

Loc = tuple[str | int, ...]

#: FastAPI's 400 for a body it could not decode (invalid UTF-8, a broken upload); it names
#: neither cause nor fix, so it is replaced by :data:`UNREADABLE_BODY`.
_FASTAPI_UNPARSABLE_BODY = "There was an error parsing the body"
UNREADABLE_BODY = "the request body could not be read: send JSON text encoded as UTF-8"

#: What talking to NATS can raise: its own errors, timeouts, and socket failures.
BUS_ERRORS: tuple[type[Exception], ...] = (nats.errors.Error, TimeoutError, OSError)


class ApiError(Exception):
    """An answer other than success, raised anywhere below a route.

    ``code`` (when a class sets one) is a stable machine-readable word next to ``detail``.
    """

    status_code = 500
    code: str | None = None

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class Unauthenticated(ApiError):
    """401: no credential, or one that is unknown, revoked or malformed."""

    status_code = 401
    code = "unauthenticated"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="flowrelay"'})


class Forbidden(ApiError):
    """403: a valid credential without the scope the operation needs."""

    status_code = 403
    code = "forbidden"


class RunNotFound(ApiError):
    status_code = 404

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} not found")


class Conflict(ApiError):
    status_code = 409


class Gone(ApiError):
    status_code = 410


class PayloadTooLarge(ApiError):
    status_code = 413


class ServiceUnavailable(ApiError):
    status_code = 503


class GatewayTimeout(ApiError):
    status_code = 504


#: JetStream's error codes that mean something to the caller.
JS_INSUFFICIENT_RESOURCES = 10023  # the store (disk) is full
JS_LIMIT_EXCEEDED = 10077  # a stream limit: maximum messages (per subject)


class BusFailure(ApiError):
    """503: NATS could not do it; ``code`` says which way (never the generic "something")."""

    status_code = 503


def bus_failure(exc: BaseException, *, connected: bool) -> BusFailure:
    """The answer for a NATS error: storage full, disconnected, or too slow."""
    err_code = getattr(exc, "err_code", None)
    if err_code == JS_INSUFFICIENT_RESOURCES:
        failure = BusFailure("JetStream storage is full: nothing could be stored; the operator must free or add "
                             "space on the NATS servers; retry later", headers={"Retry-After": "30"})
        failure.code = "storage_full"
    elif not connected or isinstance(exc, (nats.errors.ConnectionClosedError, nats.errors.NoServersError)):
        failure = BusFailure("the message bus (NATS) is not connected (the API keeps reconnecting); retry later",
                             headers={"Retry-After": "2"})
        failure.code = "nats_unavailable"
    elif isinstance(exc, TimeoutError):
        failure = BusFailure("NATS did not answer within FLOWRELAY_NATS_TIMEOUT_S; retry later",
                             headers={"Retry-After": "2"})
        failure.code = "nats_timeout"
    else:
        failure = BusFailure(f"NATS refused the operation ({type(exc).__name__}); retry later")
        failure.code = "nats_error"
    return failure


class InvalidRequest(Exception):
    """422 with one item per problem; raised for problems found after parsing."""

    status_code = 422

    def __init__(self, problems: Sequence[tuple[Loc, str, str]]) -> None:
        super().__init__("; ".join(f"{_dotted(loc)}: {msg}" for loc, msg, _ in problems))
        self.problems = list(problems)

    @classmethod
    def one(cls, loc: Loc, msg: str, type: str = "value_error") -> InvalidRequest:
        return cls([(loc, msg, type)])

    @classmethod
    def from_workflow(cls, problems: Iterable[WorkflowProblem]) -> InvalidRequest:
        return cls([(pointer_to_loc(p.pointer), p.message, "workflow_invalid") for p in problems])


def pointer_to_loc(pointer: str) -> Loc:
    """JSON pointer into the body -> FastAPI ``loc``: ``/workflow/nodes/1/id`` ->
    ``("body", "workflow", "nodes", 1, "id")``."""
    parts: list[str | int] = ["body"]
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        parts.append(int(token) if token.isdigit() else token)
    return tuple(parts)


def validation_body(problems: Iterable[tuple[Loc, str, str]]) -> dict[str, list[dict[str, object]]]:
    return {
        "detail": [
            {"loc": list(loc), "msg": f"{_dotted(loc)}: {msg}", "type": type}
            for loc, msg, type in problems
        ]
    }


def install_error_handlers(
    app: FastAPI, on_malformed: Callable[[Request], None] | None = None
) -> None:
    """Route every exception to one of the two error shapes; ``on_malformed`` sees each
    request whose parameters or body failed validation (for metrics)."""

    async def on_request_validation(request: Request, exc: Exception) -> Response:
        if on_malformed is not None:
            on_malformed(request)
        return await _on_request_validation(request, exc)

    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(InvalidRequest, _on_invalid_request)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(nats.errors.Error, _on_bus_error)
    app.add_exception_handler(TimeoutError, _on_bus_error)  # JetStream answers that never came
    app.add_exception_handler(Exception, _on_unexpected)


async def _on_request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [(tuple(e["loc"]), str(e["msg"]), str(e["type"])) for e in exc.errors()]
    return JSONResponse(validation_body(problems), status_code=422)


async def _on_invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidRequest)
    return JSONResponse(validation_body(exc.problems), status_code=422)


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    body: dict[str, str] = {"detail": exc.detail}
    if exc.code is not None:
        body["code"] = exc.code
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    headers = exc.headers
    if exc.status_code == 400 and detail == _FASTAPI_UNPARSABLE_BODY:
        detail = UNREADABLE_BODY
    elif exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
        # Starlette names the methods of the first route of the path only; GET and POST
        # /runs are two routes.
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "__none__"})
        if match == Match.PARTIAL and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


async def _on_bus_error(request: Request, exc: Exception) -> Response:
    log.warning("%s %s: NATS error %s", request.method, request.url.path, type(exc).__name__)
    context = getattr(request.app.state, "context", None)
    connected = context.connected if context is not None else False
    if context is not None:
        context.health.saw(exc)
    return await _on_api_error(request, bus_failure(exc, connected=connected))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error; the API log has the details"}, status_code=500)


def _dotted(loc: Loc) -> str:
    """``("body", "workflow", "nodes", 1, "id")`` -> ``workflow.nodes[1].id``."""
    parts = (
        list(loc[1:])
        if len(loc) > 1 and loc[0] in ("body", "query", "path", "header")
        else list(loc)
    )
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or str(loc[0] if loc else "body")
