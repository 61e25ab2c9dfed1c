"""How a model is split across processes, and the collectives the split needs.

`ParallelConfig` says how many ranks share the work and how (tensor, expert and data
parallelism); it is passed down explicitly, never kept in module globals. `Communicator`
is the one seam for collectives: `LocalCommunicator` (world size 1) returns its inputs,
`TorchCommunicator` runs them on a `torch.distributed` process group (NCCL on CUDA, gloo
on CPU). Collectives are out-of-place and return new tensors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from .config import ModelConfig


@dataclass(frozen=True)
class ParallelConfig:
    tp: int = 1  # tensor-parallel ranks (heads, groups, vocabulary and shared-expert columns)
    ep: int = 1  # expert-parallel ranks (routed experts partitioned)
    dp: int = 1  # data-parallel attention ranks (one scheduler and cache each)
    rank: int = 0

    def __post_init__(self) -> None:
        for name in ("tp", "ep", "dp"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dp > 1 and self.ep != self.world_size:
            raise ValueError(f"data-parallel attention runs its MoE across all ranks: ep must be "
                             f"{self.world_size}, got {self.ep}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside the world of {self.world_size}")

    @property
    def world_size(self) -> int:
        return max(self.tp * self.dp, self.ep)

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp

    @property
    def ep_rank(self) -> int:
        return self.rank % self.ep

    def check_layout(self) -> None:
        """The layouts the model implements: TP over all ranks, optionally with EP over the same
        ranks; or data-parallel attention (every rank its own batch) with EP over all ranks."""
        if self.ep not in (1, self.world_size):
            raise ValueError(f"ep must be 1 or the world size {self.world_size}, got {self.ep}")
        if self.dp > 1 and self.tp > 1:
            raise ValueError("data-parallel attention with tensor parallelism inside a group is not implemented")

    @property
    def tokens_replicated(self) -> bool:
        """Whether every rank runs the same tokens (TP/EP), or each its own batch (DP attention)."""
        return self.dp == 1

    def check_model(self, cfg: "ModelConfig") -> None:
        """Refuse a model whose heads, groups, experts or vocabulary do not split evenly."""
        self.check_layout()
        splits = [("num_attention_heads", cfg.num_heads, self.tp), ("o_groups", cfg.o_groups, self.tp),
                  ("vocab_size", cfg.vocab_size, self.tp), ("n_routed_experts", cfg.n_routed_experts, self.ep)]
        if self.ep == 1:
            splits.append(("moe_intermediate_size", cfg.moe_intermediate_size, self.tp))
        for name, size, parts in splits:
            if size % parts:
                raise ValueError(f"config field {name!r} ({size}) does not split into {parts} parallel parts")


class Communicator(Protocol):
    rank: int
    world_size: int

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor: ...

    def all_gather(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor: ...

    def reduce_scatter(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor: ...

    def all_to_all(self, x: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor: ...

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor: ...

    def broadcast_object(self, obj: Any, src: int = 0) -> Any: ...


class LocalCommunicator:
    """World size 1: every collective is the identity."""

    rank, world_size = 0, 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return x

    def reduce_scatter(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return x

    def all_to_all(self, x: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
        return x

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        return x

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj


class TorchCommunicator:
    """Collectives over a `torch.distributed` group (the default group when None).

    `traffic` counts the payload bytes this rank hands to each kind of collective (what it
    contributes, not the wire bytes of the backend's algorithm)."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.traffic: Counter[str] = Counter()

    def _count(self, op: str, x: torch.Tensor) -> None:
        self.traffic[op] += x.numel() * x.element_size()

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        self._count("all_reduce", x)
        out = x.clone()
        dist.all_reduce(out, group=self.group)
        return out

    def all_gather(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Concatenate every rank's `x` along `dim` (equal shapes), in rank order."""
        self._count("all_gather", x)
        src = x.movedim(dim, 0).contiguous()
        out = src.new_empty((self.world_size * src.shape[0], *src.shape[1:]))
        dist.all_gather_into_tensor(out, src, group=self.group)
        return out.movedim(0, dim)

    def reduce_scatter(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Sum `x` over ranks and keep this rank's `1/world` slice of `dim`."""
        self._count("reduce_scatter", x)
        src = x.movedim(dim, 0).contiguous()
        if src.shape[0] % self.world_size:
            raise ValueError(f"reduce_scatter: dim {dim} of size {src.shape[0]} does not split {self.world_size} ways")
        out = src.new_empty((src.shape[0] // self.world_size, *src.shape[1:]))
        dist.reduce_scatter_tensor(out, src, group=self.group)
        return out.movedim(0, dim)

    def all_to_all(self, x: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
        """Send rows `x[sum(send_counts[:r]) : +send_counts[r]]` to rank r; rows arrive in rank order."""
        if sum(send_counts) != x.shape[0]:
            raise ValueError(f"all_to_all: send counts sum to {sum(send_counts)}, x has {x.shape[0]} rows")
        self._count("all_to_all", x)
        out = x.new_empty((sum(recv_counts), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv_counts, input_split_sizes=send_counts,
                               group=self.group)
        return out

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        self._count("broadcast", x)
        out = x.clone()
        dist.broadcast(out, src=dist.get_global_rank(self.group, src) if self.group else src, group=self.group)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=dist.get_global_rank(self.group, src) if self.group else src,
                                   group=self.group)
        return box[0]


@dataclass(frozen=True)
class Parallel:
    """A rank's place in the layout and its communicators, handed to every sharded module.

    `tp_comm` joins the ranks that split attention heads and the vocabulary, `world_comm` all
    ranks (the MoE under expert parallelism). At world size 1 both are `LocalCommunicator`s and
    sharded modules are built exactly as the single-process model."""

    config: ParallelConfig = field(default_factory=ParallelConfig)
    tp_comm: Communicator = field(default_factory=LocalCommunicator)
    world_comm: Communicator = field(default_factory=LocalCommunicator)

    @property
    def tp(self) -> int:
        return self.config.tp

    @property
    def ep(self) -> int:
        return self.config.ep

    def tp_part(self, size: int) -> slice:
        """This rank's share of a dimension of `size` split over the TP ranks."""
        part = size // self.config.tp
        return slice(self.config.tp_rank * part, (self.config.tp_rank + 1) * part)

    def ep_part(self, size: int) -> slice:
        """This rank's routed experts, of `size`."""
        part = size // self.config.ep
        return slice(self.config.ep_rank * part, (self.config.ep_rank + 1) * part)


SINGLE = Parallel()


def init_parallel(config: ParallelConfig, init_method: str, device: str = "cpu",
                  timeout_s: float = 600.0) -> Parallel:
    """Join the process group for `config` (this rank is `config.rank`) and build its communicators."""
    config.check_layout()
    comm = init_distributed(config.rank, config.world_size, init_method, device, timeout_s)
    return Parallel(config, tp_comm=comm if config.tp > 1 else LocalCommunicator(), world_comm=comm)


def init_distributed(rank: int, world_size: int, init_method: str, device: str = "cpu",
                     timeout_s: float = 600.0) -> TorchCommunicator:
    """Join the default process group (NCCL on CUDA, gloo otherwise) and return its communicator."""
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
    return TorchCommunicator()
