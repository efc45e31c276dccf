"""The FastAPI application of the ingress: routes, API key, body limit, error bodies.

Routes: ``POST /v1/clarify``, ``GET /v1/stats``, ``GET /healthz``, ``GET /readyz``, and
the OpenAPI schema FastAPI generates (``/openapi.json``, ``/docs``).

Two pure ASGI middlewares run before any route: the API key check (every path, so the
schema and unknown paths are not open either) and the body-size limit (on the declared
``Content-Length`` and on the bytes actually received, so a chunked upload cannot slip
past it). Every error is a JSON :class:`~rac.serving.schemas.ErrorResponse`; an unexpected
exception is logged with its traceback and answered with a bare 500, so no stack trace
reaches a client.
"""

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from rac.evaluation.scorers import NOT_CONFIGURED
from rac.serving.auth import APIKeyChecker, presented_key
from rac.serving.config import ServeConfig
from rac.serving.schemas import ClarifyResponse, ErrorResponse, make_request_model
from rac.serving.service import ClarifyService, ServingError

logger = logging.getLogger(__name__)

ASGIApp = Callable[..., Awaitable[None]]

_ERROR_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                413: "payload_too_large", 422: "invalid_request", 500: "internal_error", 502: "bad_gateway",
                503: "unavailable", 504: "timeout"}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 413, 422, 500, 502, 503, 504)}


def error_body(status: int, message: str, fields: list[dict[str, str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": _ERROR_CODES.get(status, "error"), "message": message}
    if fields is not None:
        body["fields"] = fields
    return body


async def _send_json(send: Callable[..., Awaitable[None]], status: int, body: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


class APIKeyMiddleware:
    """401 for every HTTP request without the configured key (no-op when none is configured),
    except GET/HEAD of ``open_paths`` (relative to the app's route prefix)."""

    def __init__(self, app: ASGIApp, checker: APIKeyChecker, open_paths: tuple[str, ...] = ()):
        self.app = app
        self.checker = checker
        self.open_paths = frozenset(open_paths)

    def _is_open(self, scope: dict[str, Any]) -> bool:
        if scope.get("method") not in ("GET", "HEAD"):
            return False
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        return path in self.open_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.checker.enabled or self._is_open(scope):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not self.checker.check(presented_key(headers)):
            return await _send_json(
                send, 401, error_body(401, "missing or invalid API key: send 'Authorization: Bearer <key>' "
                                           "or 'X-API-Key: <key>'"),
                headers=[(b"www-authenticate", b'Bearer realm="rac"')])
        return await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for a request body larger than ``max_bytes``, declared or actually sent."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> dict[str, Any]:
        return error_body(413, f"request body is larger than the limit of {self.max_bytes} bytes")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length":
                if not value.isdigit():
                    return await _send_json(send, 400, error_body(400, "Content-Length is not a number"))
                if int(value) > self.max_bytes:
                    return await _send_json(send, 413, self._too_large())
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI turns an arbitrary exception while reading the body into a 400;
                    # an HTTPException passes through to the handler that answers 413.
                    raise StarletteHTTPException(413, self._too_large()["message"])
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except StarletteHTTPException as e:
            if e.status_code != 413 or started:
                raise
            await _send_json(send, 413, self._too_large())


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _validation_fields(exc: RequestValidationError) -> list[dict[str, str]]:
    fields = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            # loc holds a character offset, not a field: the body as a whole is at fault.
            reason = err.get("ctx", {}).get("error", "invalid")
            fields.append({"field": "body", "message": f"malformed JSON ({reason})"})
            continue
        # The message only: pydantic's "input" would echo the (possibly huge) value back.
        name = _field_name(err.get("loc", ()))
        if err.get("type") == "extra_forbidden":
            fields.append({"field": name, "message": "unknown field"})
        else:
            fields.append({"field": name, "message": str(err.get("msg", "invalid value"))})
    return fields


def detector_description(service: ClarifyService) -> str:
    """What the OpenAPI description says of the unsupported-span detector."""
    if service.detector is None:
        return ("Unsupported-span detector: not configured, so every answer carries unsupported_spans and "
                "detector_support as null (set detector.path to an exported detector).")
    return (f"Unsupported-span detector: configured; every answer marks the question's content words with "
            f"P(unsupported) >= {service.detector_threshold:g} in unsupported_spans (character offsets).")


def create_app(
    cfg: ServeConfig,
    service: ClarifyService,
    api_key: str | None = None,
    stats: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    check_generator: Callable[[], Awaitable[Any]] | None = None,
) -> FastAPI:
    """The ingress's FastAPI app.

    Parameters
    ----------
    cfg
        The application config (limits shape the request model and its schema).
    service
        Does the work of ``POST /v1/clarify`` and ``/readyz``.
    api_key
        The key every request must present (None: no key).
    stats
        ``async () -> dict``: the generator's batch statistics for ``GET /v1/stats``.
    check_generator
        ``async () -> Any``: raises or hangs when the generator cannot answer (``/readyz``).
    """
    checker = APIKeyChecker(api_key)
    app = FastAPI(
        title="RAC clarifying questions",
        version="1.0",
        description="Retrieves BM25 passages for an ambiguous search query and asks one clarifying question "
                    "grounded in them. " + detector_description(service),
    )
    add_error_handlers(app)
    add_clarify_route(app, service, make_request_model(cfg))
    add_probe_routes(app, service, stats, check_generator)
    if checker.enabled:
        document_api_key(app, cfg.auth.open_paths)
    # The last middleware added runs first: the key is checked before any byte of the body is read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.limits.max_body_bytes)
    app.add_middleware(APIKeyMiddleware, checker=checker, open_paths=tuple(cfg.auth.open_paths))
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error as a JSON :class:`~rac.serving.schemas.ErrorResponse`; an unexpected one as a bare 500."""

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> JSONResponse:
        fields = [{"field": exc.field, "message": exc.message}] if exc.field else None
        headers = {"Retry-After": str(int(exc.retry_after_s))} if exc.retry_after_s else None
        return JSONResponse(error_body(exc.status, exc.message, fields), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _validation_fields(exc)
        message = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return JSONResponse(error_body(422, message, fields), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else _ERROR_CODES.get(exc.status_code, "error")
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(500, "internal error"), status_code=500)


# This module has no `from __future__ import annotations` so that FastAPI sees the request
# class itself, built from the limits, not a name it cannot resolve, in the route's signature.
def add_clarify_route(app: FastAPI, service: ClarifyService, ClarifyRequest: type[BaseModel]) -> None:  # noqa: N803
    """``POST /v1/clarify``, its body validated by ``ClarifyRequest`` (:func:`make_request_model`)."""

    @app.post("/v1/clarify", response_model=ClarifyResponse, responses=_ERROR_RESPONSES,
              summary="Ask one clarifying question about a search query")
    async def clarify(request: ClarifyRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        try:
            return await service.clarify(request.query, request.top_k, request.max_new_tokens)
        except ServingError:
            raise
        except Exception:
            # Caught here rather than left to the 500 handler: Starlette re-raises after its
            # error handler, and the trace belongs in the log only.
            logger.exception("clarify failed")
            raise ServingError(500, "internal error") from None


def add_probe_routes(app: FastAPI, service: ClarifyService,
                     stats: Callable[[], Awaitable[dict[str, Any]]] | None,
                     check_generator: Callable[[], Awaitable[Any]] | None) -> None:
    """``GET /v1/stats``, ``/healthz`` and ``/readyz``."""

    @app.get("/v1/stats", summary="Batching statistics of the generator replica that answers")
    async def get_stats() -> dict[str, Any]:
        if stats is None:
            return {}
        try:
            return await stats()
        except Exception:
            logger.exception("stats failed")
            raise ServingError(503, "the generator is unavailable") from None

    @app.get("/healthz", summary="Liveness: the ingress answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: retriever and generator answer",
             responses={503: {"description": "A component is not ready"}})
    async def readyz() -> JSONResponse:
        components = await service.ready(check_generator)
        ready = all(v in ("ok", NOT_CONFIGURED) for v in components.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "components": components},
                            status_code=200 if ready else 503)


def document_api_key(app: FastAPI, open_paths: list[str]) -> None:
    """Patch the app's OpenAPI schema: the key's two headers as security schemes, required on
    every path but ``open_paths`` (the probes)."""

    def openapi_with_security() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
            for path in open_paths:
                for operation in schema["paths"].get(path, {}).values():
                    operation["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi_with_security  # type: ignore[method-assign]
