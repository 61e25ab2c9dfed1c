"""Error bodies, the exception handlers that produce them, and the OpenAPI schema that documents them.

Every error a client sees has OpenAI's body `{"error": {"message", "type", "param", "code"}}`,
except under the Anthropic-compatible `/v1/messages`, which answers Anthropic's
`{"type": "error", "error": {"type", "message"}}`. Invalid parameters are 400 (FastAPI's 422 is
remapped, in the handlers and in `/openapi.json`), as OpenAI and vLLM do.

Expected failures log one line (4xx and a client that went away at INFO, 5xx answers at WARNING);
only unexpected exceptions log a traceback.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import EngineDeadError, RequestError

log = logging.getLogger("banyan.server")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               503: "service_unavailable", 500: "internal_server_error"}
ANTHROPIC_PREFIX = "/v1/messages"
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}
CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection; nobody reads it


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def invalid(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, HTTPStatus(status).phrase),
                      "param": param, "code": code or status}}


def anthropic_error_body(status: int, message: str) -> dict:
    return {"type": "error", "error": {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}


def error_response(exc: APIError, path: str = "") -> JSONResponse:
    """The error in the shape of the API that `path` belongs to."""
    if path.startswith(ANTHROPIC_PREFIX):
        body = anthropic_error_body(exc.status, exc.message)
    else:
        body = error_body(exc.status, exc.message, exc.param, exc.code)
    return JSONResponse(body, exc.status, headers=exc.headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return (f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request")), param


def _answer(request: Request, exc: APIError) -> JSONResponse:
    level = logging.INFO if exc.status < 500 else logging.WARNING
    log.log(level, "%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
    return error_response(exc, request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    from .runner import ClientGone  # runner raises our errors, so it imports this module first

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _answer(request, invalid(message, param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _answer(request, APIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(RequestError)
    async def _rejected(request: Request, exc: RequestError) -> JSONResponse:
        return _answer(request, invalid(str(exc)))

    @app.exception_handler(EngineDeadError)
    async def _dead(request: Request, exc: EngineDeadError) -> JSONResponse:
        return _answer(request, APIError(503, f"the engine is not running: {exc}"))

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, _: ClientGone) -> Response:
        log.info("%s %s: the client disconnected; its requests were aborted", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED)


# --- OpenAPI --------------------------------------------------------------------------------------

class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    type: Literal["error"]
    error: AnthropicErrorDetail


def _documented(op: dict, schema_ref: str, takes_input: bool) -> None:
    """400 (not 422) for invalid input, and the error body for any other error status."""
    responses = op.setdefault("responses", {})
    takes_input = responses.pop("422", None) is not None or takes_input
    body = {"content": {"application/json": {"schema": {"$ref": schema_ref}}}}
    if takes_input:
        responses["400"] = {"description": "Invalid request", **body}
    responses["default"] = {"description": "Error (401 bad API key, 404 unknown model, 503 starting or "
                                           "overloaded, ...)", **body}


def install_openapi(app: FastAPI) -> None:
    """Make `/openapi.json` document the error bodies and statuses the handlers above produce."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        _, defs = models_json_schema([(ErrorResponse, "serialization"), (AnthropicErrorResponse, "serialization")],
                                     ref_template="#/components/schemas/{model}")
        components.update(defs["$defs"])
        for path, operations in schema.get("paths", {}).items():
            name = "AnthropicErrorResponse" if path.startswith(ANTHROPIC_PREFIX) else "ErrorResponse"
            for method, op in operations.items():
                _documented(op, f"#/components/schemas/{name}", method in ("post", "put", "patch"))
        return schema

    app.openapi = openapi
