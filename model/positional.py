"""The two RoPE tables of V4, evaluated once per forward at one batch's positions."""

from __future__ import annotations

import torch

from ..kernels.rope import rope_inv_freq, rope_table
from .batch import BatchPlan
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


class RopeTables:
    """Rotation tables of one forward, shared by every layer: each kind at the token
    positions with its inverse, and the compressed kind at the entry positions of each
    emission plan."""

    def __init__(self, freqs: RopeFrequencies, plan: BatchPlan) -> None:
        self._freqs, self._plan = freqs, plan
        self._tables: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}
        self._entries: dict[tuple[int, bool], torch.Tensor] = {}

    def for_kind(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(rotation, inverse rotation) `[N, rope_dim // 2]` for a layer kind."""
        compressed = kind != SWA
        if compressed not in self._tables:
            table = rope_table(self._plan.positions, self._freqs.compress if compressed else self._freqs.main)
            self._tables[compressed] = (table, table.conj_physical())
        return self._tables[compressed]

    def entries(self, ratio: int, overlap: bool) -> torch.Tensor:
        """`[E, rope_dim // 2]` rotations of the entries that compressors of this kind emit
        in this batch (entry w sits at position w * ratio)."""
        key = (ratio, overlap)
        if key not in self._entries:
            self._entries[key] = rope_table(self._plan.emissions[key].entry_pos, self._freqs.compress)
        return self._entries[key]
