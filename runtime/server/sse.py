"""Server-sent events: start a stream so that errors before the first event are still
plain HTTP errors, and errors after it become an error event."""

from __future__ import annotations

import json
from typing import AsyncIterator

from fastapi.responses import StreamingResponse

from .errors import APIError, error_body

DONE = "data: [DONE]\n\n"


def event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def start_stream(events: AsyncIterator[str]) -> StreamingResponse:
    """Pull the first event now (admission, validation and the first token happen here),
    then stream the rest followed by `[DONE]`."""
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
            yield event(error_body(exc.status, exc.message, exc.param, exc.code))
        except Exception as exc:  # never leave a client with a half-written stream and no reason
            yield event(error_body(500, f"{type(exc).__name__}: {exc}"))
        finally:  # on a client disconnect this aborts the engine requests
            await events.aclose()
        yield DONE

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
