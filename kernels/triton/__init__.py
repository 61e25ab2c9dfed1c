"""Triton kernels for V4's hot ops (GPU; on CPU they run under `TRITON_INTERPRET=1`).

    gemm_fp8     block-FP8 GEMM (split-K at small M), grouped wo_a, weight dequantisation
    moe / router fused routed experts (dense, FP8, FP4) / sqrt-softplus top-k and hash routing
    indexer      lightning-indexer scores over float or FP8 keys, then the top-k
    sparse_attn  sparse attention with sinks over float or FP8 (584-byte) pools
    mhc          hc_pre / hc_head (projection + Sinkhorn + collapse), hc_post
    prologue     q/kv norm + RoPE, FP8 QDQ and paged insert (kv_write: the row store)
    compressor   a compressor window's close: pool, norm, RoPE, QDQ, insert
    sampling     sync-free Gumbel-max sampling

Nothing here is imported by the model: `banyan.kernels.dispatch` picks an implementation
per op and imports these modules lazily, so importing this package does not import triton.
`ref/` is the torch side: the formats (FP8 KV rows, FP8 indexer keys, official activation
quantisation), the sampler's counter-based RNG, and each op's torch implementation (mostly
adapters over the references elsewhere in `banyan.kernels`).
"""
