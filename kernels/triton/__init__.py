"""Triton kernels for V4's hot ops (GPU; on CPU they run under `TRITON_INTERPRET=1`).

Nothing here is imported by the model directly: `banyan.kernels.dispatch` picks an
implementation per op and imports these modules lazily, so importing this package does
not import triton. `ref/` holds torch references for the formats and fusions that have no
counterpart elsewhere in `banyan.kernels` (the 584-byte FP8 KV row, the FP8 indexer keys,
official activation quantisation, the sync-free sampler's RNG).
"""
