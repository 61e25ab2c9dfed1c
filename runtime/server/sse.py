"""Server-sent events: start a stream so that errors before the first event are still
plain HTTP errors, and errors after it become an error event in the API's own shape."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from .errors import APIError, error_body

log = logging.getLogger("banyan.server")

DONE = "data: [DONE]\n\n"


def event(payload: dict, name: str | None = None) -> str:
    """One SSE event; `name` adds an `event:` line (the Responses and Messages APIs name theirs)."""
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def openai_error_event(exc: APIError) -> str:
    """A mid-stream error as vLLM and the openai client expect it: `data: {"error": ...}`."""
    return event(error_body(exc.status, exc.message, exc.param, exc.code))


async def start_stream(events: AsyncIterator[str], error_event: Callable[[APIError], str] = openai_error_event,
                       done: str | None = DONE) -> StreamingResponse:
    """Pull the first event now (admission, validation and the first token happen here),
    then stream the rest followed by `done` (None: nothing)."""
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise

    async def body() -> AsyncIterator[str]:
        yield first
        try:
            async for item in events:
                yield item
        except APIError as exc:
            log.warning("stream ended with error %d: %s", exc.status, exc.message)
            yield error_event(exc)
        except Exception as exc:  # never leave a client with a half-written stream and no reason
            log.exception("stream failed")
            yield error_event(APIError(500, f"{type(exc).__name__}: {exc}"))
        except (asyncio.CancelledError, GeneratorExit):
            log.info("client disconnected during a stream; its requests are aborted")
            raise
        finally:  # on a client disconnect this aborts the engine requests
            await events.aclose()
        if done:
            yield done

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
