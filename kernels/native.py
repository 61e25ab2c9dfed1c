"""Native CPU helpers: small C loops for ops that eager torch runs as dozens of tiny calls.

At one decode token, mHC's Sinkhorn is 39 dependent normalisations of a 4 x 4 matrix: in
eager torch that is 78 calls of a few microseconds each, 12 times a step. The same loop in C
is one call. The C code does exactly the torch reference's arithmetic (each sum adds the n
terms in order, then eps, then one IEEE division per element; no fast-math, no contraction),
so the two agree to the bit.

The library is built on first use with the system C compiler into `$BANYAN_HOME/native`
(keyed by a hash of source and flags) and loaded with ctypes; nothing is downloaded. Where
there is no compiler, the build fails or `BANYAN_NATIVE=0` is set, `library()` returns None
and callers keep their torch path. (A torch C++ extension would do the same job, but
compiling against torch's headers takes a minute on two cores; this source needs no headers.)
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ENV = "BANYAN_NATIVE"
MAX_N = 16  # largest matrix side the Sinkhorn kernel takes (V4's hc_mult is 4)
_FLAGS = ("-O3", "-shared", "-fPIC", "-fno-fast-math", "-ffp-contract=off", "-std=c99")

_SOURCE = r"""
#include <stdint.h>

#define LANES 8
#define MAX_N 16

/* Normalise the lines of LANES interleaved n x n matrices, m[(i*n + j)*LANES + lane]:
   columns (stride_line = 1, stride_elem = n) or rows (n, 1). */
static void normalise(float *m, int64_t n, int64_t stride_line, int64_t stride_elem, float eps) {
    for (int64_t a = 0; a < n; a++) {
        float s[LANES];
        float *first = m + a * stride_line * LANES;
        for (int l = 0; l < LANES; l++) s[l] = first[l];
        for (int64_t b = 1; b < n; b++) {
            float *e = first + b * stride_elem * LANES;
            for (int l = 0; l < LANES; l++) s[l] += e[l];
        }
        for (int l = 0; l < LANES; l++) s[l] += eps;
        for (int64_t b = 0; b < n; b++) {
            float *e = first + b * stride_elem * LANES;
            for (int l = 0; l < LANES; l++) e[l] /= s[l];
        }
    }
}

/* In place on x[t][n][n]: columns, then (rows, columns) x (iters - 1). */
void banyan_sinkhorn_f32(float *x, int64_t t, int64_t n, float eps, int64_t iters) {
    float m[MAX_N * MAX_N * LANES];
    int64_t nn = n * n;
    for (int64_t t0 = 0; t0 < t; t0 += LANES) {
        int64_t w = t - t0 < LANES ? t - t0 : LANES;
        for (int64_t e = 0; e < nn; e++)
            for (int l = 0; l < LANES; l++) m[e * LANES + l] = l < w ? x[(t0 + l) * nn + e] : 1.0f;
        normalise(m, n, 1, n, eps);
        for (int64_t it = 1; it < iters; it++) {
            normalise(m, n, n, 1, eps);
            normalise(m, n, 1, n, eps);
        }
        for (int64_t e = 0; e < nn; e++)
            for (int64_t l = 0; l < w; l++) x[(t0 + l) * nn + e] = m[e * LANES + l];
    }
}
"""


def _cache_dir() -> Path:
    home = Path(os.environ.get("BANYAN_HOME", Path.home() / ".cache" / "banyan"))
    return home / "native"


def _build(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc, gcc or $CC) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "banyan_native.c", Path(tmp) / target.name
        src.write_text(_SOURCE)
        subprocess.run([compiler, *_FLAGS, str(src), "-o", str(out)], check=True, capture_output=True, timeout=120)
        os.replace(out, target)  # atomic: a concurrent builder's copy is as good


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded helper library, built if needed; None when unavailable (see the docstring)."""
    if os.environ.get(ENV, "1") == "0":
        return None
    digest = hashlib.sha256((_SOURCE + " ".join(_FLAGS)).encode()).hexdigest()[:16]
    target = _cache_dir() / f"banyan_native_{digest}.so"
    try:
        if not target.exists():
            _build(target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:
        log.info("native CPU helpers unavailable (%s); using torch", e)
        return None
    lib.banyan_sinkhorn_f32.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
                                        ctypes.c_int64]
    lib.banyan_sinkhorn_f32.restype = None
    return lib


def sinkhorn_(comb: torch.Tensor, eps: float, iters: int) -> bool:
    """Sinkhorn-normalise contiguous fp32 CPU `comb [T, n, n]` in place, as `kernels.mhc.sinkhorn`
    does; returns False (and leaves `comb` alone) where the native path does not apply."""
    lib = library()
    if (lib is None or comb.device.type != "cpu" or comb.dtype != torch.float32 or not comb.is_contiguous()
            or comb.dim() != 3 or not 0 < comb.shape[1] == comb.shape[2] <= MAX_N or iters < 1):
        return False
    lib.banyan_sinkhorn_f32(comb.data_ptr(), comb.shape[0], comb.shape[1], eps, iters)
    return True
