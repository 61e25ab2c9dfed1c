"""Engine options shared by `Engine`, `banyan serve` and the scheduler process."""

from __future__ import annotations

import msgspec

from ..model.hub import resolve_model_path
from ..model.kv_cache import KV_CACHE_DTYPES
from ..model.loader import WEIGHT_FORMATS
from ..model.parallel import ParallelConfig


def _is_host_port(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


class EngineOptions(msgspec.Struct, kw_only=True):
    model_path: str | None = None  # None: the embedded tiny default model; a hub id resolves to its cached snapshot
    dtype: str = "float32"  # float32 | bfloat16
    weight_format: str = "auto"  # auto | native | dequant; auto: native on CUDA, dequant on CPU (README)
    kv_cache_dtype: str = "auto"  # auto (the model dtype) | bfloat16 | fp8_e4m3 (official FP8 KV layout)
    device: str = "cpu"
    cpu_threads: int = 0  # intra-op threads of each model process on CPU; 0: auto (model.threads)
    page_size: int | None = None  # default: the smallest multiple of every compression ratio
    chunked_prefill_size: int = 512
    schedule_policy: str = "fcfs"  # fcfs | lpm
    max_running_requests: int = 32
    kv_cache_bytes: int = 256 << 20  # state-pool budget on CPU
    mem_fraction: float = 0.85  # on CUDA: fraction of free memory for the state pools
    enable_prefix_cache: bool = True
    swa_fraction: float = 1.0  # sliding-window pages per compressed page (see scheduler.pools)
    prefill_waiting_share: float = 0.25  # budget share a long prefill leaves to other requests (Scheduler)
    speculative_algorithm: str | None = None  # "mtp" (aliases nextn, eagle): draft with the MTP layer
    speculative_num_draft_tokens: int = 2  # K drafts per verify step
    max_model_len: int | None = None
    startup_timeout: float = 300.0
    watchdog_timeout: float = 300.0  # a model step running longer than this kills the scheduler
    grammar_compile_timeout: float = 10.0  # a grammar still compiling after this fails its request
    # parallelism (SGLang's names): ranks = max(tp_size * dp_size, ep_size), spread evenly over nnodes
    tp_size: int = 1
    ep_size: int = 1
    dp_size: int = 1
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None  # HOST:PORT of rank 0's rendezvous; required with nnodes > 1

    def __post_init__(self) -> None:
        if self.model_path is not None:
            self.model_path = resolve_model_path(self.model_path)

    def validate(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.weight_format not in ("auto", *WEIGHT_FORMATS):
            raise ValueError(f"weight_format must be auto, native or dequant, got {self.weight_format!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                             f"got {self.kv_cache_dtype!r}")
        if self.schedule_policy not in ("fcfs", "lpm"):
            raise ValueError(f"schedule_policy must be fcfs or lpm, got {self.schedule_policy!r}")
        if self.cpu_threads < 0:
            raise ValueError(f"cpu_threads must be >= 0 (0: auto), got {self.cpu_threads}")
        if self.chunked_prefill_size < 1 or self.max_running_requests < 1:
            raise ValueError("chunked_prefill_size and max_running_requests must be >= 1")
        if self.speculative_algorithm not in (None, "mtp", "nextn", "eagle"):
            raise ValueError(f"speculative_algorithm must be mtp (or nextn / eagle), got {self.speculative_algorithm!r}")
        if not 1 <= self.speculative_num_draft_tokens <= 4:
            raise ValueError(f"speculative_num_draft_tokens must be in [1, 4], got {self.speculative_num_draft_tokens}")
        if not 0 <= self.prefill_waiting_share < 1:
            raise ValueError(f"prefill_waiting_share must be in [0, 1), got {self.prefill_waiting_share}")
        if self.watchdog_timeout <= 0 or self.grammar_compile_timeout <= 0:
            raise ValueError("watchdog_timeout and grammar_compile_timeout must be > 0")
        self._validate_parallel()

    def parallel_config(self, rank: int = 0) -> ParallelConfig:
        return ParallelConfig(tp=self.tp_size, ep=self.ep_size, dp=self.dp_size, rank=rank)

    @property
    def world_size(self) -> int:
        return self.parallel_config().world_size

    @property
    def local_ranks(self) -> range:
        """The global ranks this node runs."""
        per_node = self.world_size // self.nnodes
        return range(self.node_rank * per_node, (self.node_rank + 1) * per_node)

    def _validate_parallel(self) -> None:
        self.parallel_config().check_layout()
        if self.dp_size > 1 and self.nnodes > 1:
            raise ValueError("data-parallel attention runs on one node for now (nnodes must be 1)")
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank must be in [0, nnodes={self.nnodes}), got {self.node_rank}")
        if self.world_size % self.nnodes:
            raise ValueError(f"{self.world_size} ranks do not spread evenly over {self.nnodes} nodes")
        if self.nnodes > 1 and not self.dist_init_addr:
            raise ValueError("multi-node serving needs dist_init_addr (HOST:PORT of node 0)")
        if self.dist_init_addr is not None and not _is_host_port(self.dist_init_addr):
            raise ValueError(f"dist_init_addr must be HOST:PORT, got {self.dist_init_addr!r}")
        if self.world_size > 1 and self.speculative_algorithm is not None:
            raise ValueError("speculative decoding is not supported with tensor/expert parallelism yet")

    def resolved_weight_format(self) -> str:
        """`auto`: native on CUDA (the only way a real checkpoint fits), dequant on CPU (faster
        there: the tiny model decodes 3.6x and prefills 1.7x faster dense; README)."""
        if self.weight_format != "auto":
            return self.weight_format
        return "native" if self.device.startswith("cuda") else "dequant"
