"""HTTP plumbing shared by the server backends: clients, errors, server-sent events."""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import httpx

from ..errors import BackendError

RETRIES = 8  # 503s (the server is starting or its queue is full) waited out before giving up
MAX_WAIT = 5.0  # seconds: the longest Retry-After honoured between two tries


def make_client(base_url: str, api_key: str | None, timeout: float | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)


def raise_for_status(response: httpx.Response) -> None:
    """BackendError with the server's message (OpenAI error body or plain text) on a failure."""
    if response.status_code < 400:
        return
    response.read()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text
    raise BackendError(f"{response.request.method} {response.request.url.path} failed "
                       f"({response.status_code}): {message}")


def send(client: httpx.Client, method: str, path: str, body: dict | None = None,
         stream: bool = False) -> httpx.Response:
    """The response to a request, retried while the server answers 503 (after its Retry-After);
    BackendError for a failure. A streamed response must be closed by the caller."""
    for attempt in range(RETRIES + 1):
        response = client.send(client.build_request(method, path, json=body), stream=stream)
        if response.status_code != 503 or attempt == RETRIES:
            break
        response.close()
        time.sleep(min(float(response.headers.get("Retry-After", 1)), MAX_WAIT))
    try:
        raise_for_status(response)
    except BackendError:
        response.close()
        raise
    return response


def request_json(client: httpx.Client, method: str, path: str, body: dict | None = None) -> Any:
    return send(client, method, path, body).json()


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, up to `data: [DONE]`."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)
