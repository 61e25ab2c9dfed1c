"""Server-level settings (the engine's own options are `EngineOptions`)."""

from __future__ import annotations

import msgspec


class ServerSettings(msgspec.Struct, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 30000
    served_model_name: str | None = None  # default: the model directory's name
    api_key: str | None = None
    max_queued_requests: int = 256  # requests beyond the running ones; more get 503
    default_thinking: bool = False  # reasoning mode when a chat request does not say
    max_model_len: int | None = None  # default: what the KV pools can hold for one request
    log_level: str = "info"
    max_request_bytes: int | None = None  # request body limit; default: sized for max_model_len (ServerState)
    shutdown_timeout: float = 30.0  # on SIGTERM: seconds in-flight requests may take to finish
