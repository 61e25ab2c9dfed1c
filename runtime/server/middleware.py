"""ASGI middleware: request ids, the API key, the request body limit.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, so that streamed responses and client
disconnects pass through untouched.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from contextvars import ContextVar
from typing import Callable

from fastapi import HTTPException

from .errors import APIError, error_response

REQUEST_ID: ContextVar[str] = ContextVar("banyan_request_id", default="")


def _header(scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope.get("headers") or [] if key == name), None)


class RequestIdMiddleware:
    """Puts `x-request-id` on every response: the client's own, or a new one. The id is set in
    `REQUEST_ID` while the request runs, and names its engine requests (so scheduler logs name it)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given.decode("latin-1") if given else uuid.uuid4().hex
        header = (b"x-request-id", rid.encode("latin-1"))

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        token = REQUEST_ID.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class ApiKeyMiddleware:
    """Requires `Authorization: Bearer KEY` (or `X-API-Key: KEY`) on every route but `open_paths`
    and CORS preflights. Keys are compared as SHA-256 digests in constant time, so neither the
    key's content nor its length leaks through response timing."""

    def __init__(self, app, api_key: str, open_paths: set[str]) -> None:
        self.app, self.open_paths = app, open_paths
        self._key = _digest(api_key.encode())

    def _authorized(self, scope) -> bool:
        bearer = _header(scope, b"authorization") or b""
        token = bearer[7:] if bearer[:7].lower() == b"bearer " else b""
        header_key = _header(scope, b"x-api-key") or b""
        # both comparisons always run: which header carried the key must not show in the timing
        return hmac.compare_digest(_digest(token), self._key) | hmac.compare_digest(_digest(header_key), self._key)

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] == "http" and scope["method"] != "OPTIONS" and scope["path"] not in self.open_paths
                and not self._authorized(scope)):
            response = error_response(APIError(401, "Invalid or missing API key; send 'Authorization: Bearer KEY'.",
                                               code="invalid_api_key"))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _too_large(limit: int) -> str:
    return (f"The request body is larger than this server accepts ({limit} bytes; see --max-request-bytes). "
            "Shorten the prompt.")


class BodyLimitMiddleware:
    """413 for a request body over `limit()` bytes: before reading it when Content-Length says so,
    else as soon as the body streamed so far passes the limit."""

    def __init__(self, app, limit: Callable[[], int]) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        declared = _header(scope, b"content-length")
        if declared is not None and int(declared) > limit:  # the HTTP parser has checked it is a number
            await error_response(APIError(413, _too_large(limit), code="request_too_large"))(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI passes an HTTPException raised while reading the body through unchanged
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, limited_receive, send)
