"""The two RoPE tables of V4, evaluated at one batch's token positions."""

from __future__ import annotations

import torch

from ..kernels.rope import rope_cos_sin, rope_inv_freq
from .config import SWA, ModelConfig


class RopeFrequencies:
    """Plain theta=10000 for sliding-window layers; theta=160000 with YaRN for the rest
    (their attention, compressors and indexer alike)."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.main = rope_inv_freq(cfg.rope_head_dim, cfg.rope_theta)
        yarn = cfg.yarn
        self.compress = rope_inv_freq(
            cfg.rope_head_dim, cfg.compress_rope_theta,
            yarn_factor=yarn.factor if yarn else None,
            original_max_position=yarn.original_max_position_embeddings if yarn else 65536,
            beta_fast=yarn.beta_fast if yarn else 32.0, beta_slow=yarn.beta_slow if yarn else 1.0)

    def to(self, device: torch.device) -> "RopeFrequencies":
        self.main, self.compress = self.main.to(device), self.compress.to(device)
        return self


class BatchRope:
    """cos/sin of both tables at the positions of one batch."""

    def __init__(self, freqs: RopeFrequencies, positions: torch.Tensor) -> None:
        self.compress_inv_freq = freqs.compress
        self._tables = {"main": rope_cos_sin(positions, freqs.main),
                        "compress": rope_cos_sin(positions, freqs.compress)}

    def for_kind(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self._tables["main" if kind == SWA else "compress"]
