"""Native CPU helpers: small C loops for the decode-time ops eager torch runs badly.

* Sinkhorn. At one decode token, mHC's Sinkhorn is 39 dependent normalisations of a 4 x 4
  matrix: in eager torch that is 78 calls of a few microseconds each, 12 times a step. The
  same loop in C is one call. It does exactly the torch reference's arithmetic (each sum adds
  the n terms in order, then eps, then one IEEE division per element; no fast-math, no
  contraction), so the two agree to the bit.
* A bf16-weight GEMV (`bf16_gemv`): fp32 rows times a weight whose values are bf16 (as
  checkpoints store the output head), read as bf16 from a panel layout and accumulated in
  fp32. At a few rows the product is bound by reading the weight, so half the bytes is
  about half the time: the tiny model's head (129,280 x 64) takes ~1.1 ms instead of ~3 ms
  per decode step on one core.
* Lightning-indexer scores (`indexer_scores`): each candidate key row is read straight from
  the pool, and each score summed over the heads as it is made, instead of gathering the keys
  into a copy and writing `[queries, heads, keys]` dot products between two batched matmuls.

* The rest of a few-token fp32 step, one call where torch takes several ops: mHC's pre and
  post mixes (`hc_pre`, `hc_post`), sparse attention with the sink and the inverse RoPE, the
  q/kv norm + RoPE and small RMS norms (`norm_rope`, `rms_norm`), a compressor's projections
  (`compressor_rows`), MoE routing (`route`), the routed experts (`moe_experts`) and the
  shared expert (`swiglu_mlp`). At one token each op is a few microseconds of dispatch and
  almost no arithmetic, so the count of calls is the cost.

Each wrapper returns None where its helper does not apply (device, dtype, size), and its
caller, the torch backend of a dispatch op, runs torch instead. Apart from Sinkhorn the
helpers sum in a fixed order that differs from MKL's, so they agree with the torch ops to
fp32 rounding, not to the bit.

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
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ENV = "BANYAN_NATIVE"
MAX_N = 16  # largest matrix side the Sinkhorn kernel takes (V4's hc_mult is 4)
# -march=native: the library is built on the machine that runs it, and the GEMV's vector
# types then use its widest registers; the flags keep IEEE arithmetic either way
_FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-fno-fast-math", "-ffp-contract=off", "-std=gnu99",
          "-pthread")
PANEL = 16  # output rows per panel of a packed bf16 weight
STREAM_MIN_BYTES = 1 << 20  # operand bytes from which a helper splits its work over threads
_max_threads = torch.get_num_threads()


def _cpu_f32(*tensors: torch.Tensor) -> bool:
    """Every tensor fp32 on the CPU (`is_cpu` and a dtype identity: a few times cheaper than
    `device.type` comparisons, and every wrapper checks its operands on every call)."""
    for t in tensors:
        if not t.is_cpu or t.dtype is not torch.float32:
            return False
    return True


def set_max_threads(n: int) -> None:
    """The threads a big helper call splits over (`model.threads.configure` sets the process's
    choice). A step that runs its torch ops on one thread still splits these: each is one
    memory-bound pass over megabytes, where a thread costs ~20 us to start and every core reads
    its own part."""
    global _max_threads
    _max_threads = max(1, n)


def _threads(nbytes: int) -> int:
    return _max_threads if nbytes >= STREAM_MIN_BYTES else 1

_SOURCE = r"""
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 8
#define MAX_N 16
#define PANEL 16
#define ROW_BLOCK 4
#define MAX_THREADS 64
#define MAX_EXPERTS 1024

/* The machine's vector registers: a PANEL of 16 floats is PV of them. A vector type wider than
   the registers is lowered through memory (on AVX2, a 64-byte vector ran the indexer ~8x slower),
   so each panel is an array of register-wide vectors; every sum adds a panel's lanes in one
   fixed order, so results do not depend on the width. The indexer's scores are the exception:
   their lane sums follow the width, and they use a fused multiply-add where there is one. */
#if defined(__AVX512F__)
#define VEC 16
#elif defined(__AVX__)
#define VEC 8
#else
#define VEC 4
#endif
#define PV (PANEL / VEC)
typedef float vec_f32 __attribute__((vector_size(VEC * 4)));
typedef uint32_t vec_u32 __attribute__((vector_size(VEC * 4)));

/* acc + a * s (s a float, on every lane) in one rounding where the ISA has a fused multiply-add, else
   a multiply and an add. Only the indexer's score loop uses it: it is bound by these operations,
   and a fused one does the work of two (and reads s with a broadcast load). Its scores choose a
   top-k; they do not enter the residual stream. */
#if VEC == 16 && defined(__AVX512F__)
#include <immintrin.h>
#define FMADD(acc, a, s) ((vec_f32)_mm512_fmadd_ps((__m512)(a), _mm512_set1_ps(s), (__m512)(acc)))
#elif VEC == 8 && defined(__FMA__)
#include <immintrin.h>
#define FMADD(acc, a, s) ((vec_f32)_mm256_fmadd_ps((__m256)(a), _mm256_set1_ps(s), (__m256)(acc)))
#else
#define FMADD(acc, a, s) ((acc) + (a) * (s))
#endif

/* lane l of a panel held as PV vectors */
#define LANE(panel, l) ((panel)[(l) / VEC][(l) % VEC])

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

/* ---- mHC's pre-block mix for a few tokens, as kernels.mhc.hc_pre:
   x [T, n*D] -> collapsed [T, D], post [T, n], comb [T, n, n] (Sinkhorn-normalised) */
/* A panel's 16 lanes summed as a tree (l + 8, then + 4, + 2, + 1): four dependent adds, not
   sixteen, and the same order whatever the vector width. */
static inline float panel_sum(const vec_f32 *acc) {
    float s[PANEL];
    for (int l = 0; l < PANEL; l++) s[l] = LANE(acc, l);
    for (int width = PANEL / 2; width > 0; width /= 2)
        for (int l = 0; l < width; l++) s[l] += s[l + width];
    return s[0];
}

static float dot(const float *a, const float *b, int64_t len) {
    vec_f32 acc[PV] = {{0}}, av, bv;
    int64_t i = 0;
    for (; i + PANEL <= len; i += PANEL)
        for (int v = 0; v < PV; v++) {
            memcpy(&av, a + i + v * VEC, sizeof av);
            memcpy(&bv, b + i + v * VEC, sizeof bv);
            acc[v] += av * bv;
        }
    float sum = panel_sum(acc);
    for (; i < len; i++) sum += a[i] * b[i];
    return sum;
}

/* y[j] = w[j] . x for j < n (w [n, k] dense) */
static void gemv(const float *w, const float *x, int64_t n, int64_t k, float *y) {
    for (int64_t j = 0; j < n; j++) y[j] = dot(w + j * k, x, k);
}

/* rotate pairs (tail[2i], tail[2i+1]) by rot[i] = (cos, sin) */
static void rotate(float *tail, const float *rot, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        float re = tail[2 * i], im = tail[2 * i + 1], c = rot[2 * i], sn = rot[2 * i + 1];
        tail[2 * i] = re * c - im * sn;
        tail[2 * i + 1] = re * sn + im * c;
    }
}

void banyan_norm_rope(const float *x, int64_t rows, int64_t d, int64_t per_token, const float *weight, float eps,
                      const float *rope, int64_t half, float *out, const int64_t *dest);

/* out = sum_k pre[k] * x[k] over a token's n streams x [n, D]; with out_norm, then RMS-normed (eps
   out_eps) times out_norm: the next block's input norm, or the model's final one */
static void collapse(const float *x, const float *pre, int64_t n, int64_t d, const float *out_norm, float out_eps,
                     float *out) {
    for (int64_t j = 0; j < d; j++) out[j] = pre[0] * x[j];
    for (int64_t k = 1; k < n; k++)
        for (int64_t j = 0; j < d; j++) out[j] += pre[k] * x[k * d + j];
    if (out_norm) banyan_norm_rope(out, 1, d, 1, out_norm, out_eps, NULL, 0, out, NULL);
}

/* z[r] = base[r] + (fn[r] . x) * scale[group of r] / rms(x) for r < rows, the groups being rows
   [0, n) (pre), [n, 2n) (post) and the rest (comb) */
static void mix(const float *x, int64_t width, const float *fn, int64_t rows, int64_t n, const float *scale,
                const float *base, float norm_eps, float *z) {
    float inv_rms = 1.0f / sqrtf(dot(x, x, width) / (float)width + norm_eps);
    for (int64_t r = 0; r < rows; r++) {
        int which = r < n ? 0 : r < 2 * n ? 1 : 2;
        z[r] = base[r] + dot(fn + r * width, x, width) * (scale[which] * inv_rms);
    }
}

void banyan_hc_pre(const float *x, int64_t t, int64_t n, int64_t d, const float *fn, const float *scale,
                   const float *base, float norm_eps, float eps, int64_t iters, const float *out_norm, float out_eps,
                   float *collapsed, float *post, float *comb) {
    int64_t width = n * d, mixes = (2 + n) * n;
    for (int64_t i = 0; i < t; i++) {
        const float *xi = x + i * width;
        float z[(2 + MAX_N) * MAX_N];
        mix(xi, width, fn, mixes, n, scale, base, norm_eps, z);
        float pre[MAX_N];
        for (int64_t k = 0; k < n; k++) {
            pre[k] = 1.0f / (1.0f + expf(-z[k])) + eps;
            post[i * n + k] = 2.0f / (1.0f + expf(-z[n + k]));
        }
        for (int64_t a = 0; a < n; a++) {
            const float *row = z + 2 * n + a * n;
            float *out = comb + (i * n + a) * n, top = row[0], sum = 0.0f;
            for (int64_t b = 1; b < n; b++) top = row[b] > top ? row[b] : top;
            for (int64_t b = 0; b < n; b++) sum += out[b] = expf(row[b] - top);
            for (int64_t b = 0; b < n; b++) out[b] = out[b] / sum + eps;
        }
        collapse(xi, pre, n, d, out_norm, out_eps, collapsed + i * d);
    }
    banyan_sinkhorn_f32(comb, t, n, eps, iters);
}

/* ---- mHC's last collapse for a few tokens, as kernels.mhc.hc_head: pre[k] = sigmoid(base[k] +
   (fn[k] . x) * scale[0] / rms(x)) + eps, out = sum_k pre[k] x[k] (x [T, n*D] -> out [T, D]); with
   out_norm, out is then RMS-normed (eps out_eps) times out_norm: the model's final norm */
void banyan_hc_head(const float *x, int64_t t, int64_t n, int64_t d, const float *fn, const float *scale,
                    const float *base, float norm_eps, float eps, const float *out_norm, float out_eps, float *out) {
    int64_t width = n * d;
    for (int64_t i = 0; i < t; i++) {
        const float *xi = x + i * width;
        float pre[MAX_N];
        mix(xi, width, fn, n, n, scale, base, norm_eps, pre);
        for (int64_t k = 0; k < n; k++) pre[k] = 1.0f / (1.0f + expf(-pre[k])) + eps;
        collapse(xi, pre, n, d, out_norm, out_eps, out + i * d);
    }
}

/* ---- sparse attention with a sink for a few queries, as kernels.sparse_attention:
   each query's used rows of the window list (idx) and the extra list (eidx): j < length and
   index >= 0; one softmax per head over their scores and the sink; with `rope`, each output's
   trailing 2 * half channels rotated by the query's rope[t] (the inverse rotation). */
#define MAX_ROWS 4096

static void axpy(float *y, float a, const float *x, int64_t len) {
    vec_f32 av = {0}, xv, yv;
    av += a;
    int64_t i = 0;
    for (; i + VEC <= len; i += VEC) {
        memcpy(&xv, x + i, sizeof xv);
        memcpy(&yv, y + i, sizeof yv);
        yv += av * xv;
        memcpy(y + i, &yv, sizeof yv);
    }
    for (; i < len; i++) y[i] += a * x[i];
}

static int64_t used_rows(const float *pool, const int64_t *idx, int64_t length, int64_t width, int64_t d,
                         const float **rows, int64_t n) {
    for (int64_t j = 0; j < width && j < length && n < MAX_ROWS; j++)
        if (idx[j] >= 0) rows[n++] = pool + idx[j] * d;
    return n;
}

/* returns 0 when a query lists more than MAX_ROWS rows (the caller then uses torch) */
int banyan_sparse_attention(const float *q, int64_t t, int64_t h, int64_t d, const float *kv, const int64_t *idx,
                            const int64_t *len, int64_t ks, const float *extra, const int64_t *eidx,
                            const int64_t *elen, int64_t kx, const float *sink, float scale, const float *rope,
                            int64_t half, float *out) {
    if (ks + kx > MAX_ROWS) return 0;
    const float *rows[MAX_ROWS];
    float score[MAX_ROWS];
    for (int64_t i = 0; i < t; i++) {
        int64_t n = used_rows(kv, idx + i * ks, len[i], ks, d, rows, 0);
        if (extra) n = used_rows(extra, eidx + i * kx, elen[i], kx, d, rows, n);
        for (int64_t hh = 0; hh < h; hh++) {
            const float *qh = q + (i * h + hh) * d;
            float *oh = out + (i * h + hh) * d, top = sink[hh];
            for (int64_t j = 0; j < n; j++) {
                score[j] = dot(qh, rows[j], d) * scale;
                top = score[j] > top ? score[j] : top;
            }
            float total = expf(sink[hh] - top);
            for (int64_t j = 0; j < n; j++) total += score[j] = expf(score[j] - top);
            memset(oh, 0, d * sizeof(float));
            for (int64_t j = 0; j < n; j++) axpy(oh, score[j] / total, rows[j], d);
            if (rope) rotate(oh + d - 2 * half, rope + i * half * 2, half);
        }
    }
    return 1;
}

/* ---- a compressor's rows for a few tokens, as kernels.triton.ref.attention.compressor_rows:
   rows[t] = (wkv x[t], wgate x[t] + ape[ape_index[t]])  (rows [T, 2, W]; wkv, wgate [W, D]; ape [m, W]) */
void banyan_compressor_rows(const float *x, int64_t t, int64_t d, const float *wkv, const float *wgate,
                            const float *ape, const int64_t *ape_index, int64_t w, float *rows) {
    for (int64_t i = 0; i < t; i++) {
        const float *xi = x + i * d, *bias = ape + ape_index[i] * w;
        float *kv = rows + i * 2 * w, *score = kv + w;
        for (int64_t j = 0; j < w; j++) kv[j] = dot(wkv + j * d, xi, d);
        for (int64_t j = 0; j < w; j++) score[j] = dot(wgate + j * d, xi, d) + bias[j];
    }
}

/* ---- mHC's post-block mix, as kernels.mhc.hc_post:
   y[t][k] = post[t][k] * out[t] + sum_j comb[t][j][k] * x[t][j]  (x, y [T, n, D]; out [T, D]) */
void banyan_hc_post(const float *out, const float *x, const float *post, const float *comb, int64_t t, int64_t n,
                    int64_t d, float *y) {
    for (int64_t i = 0; i < t; i++)
        for (int64_t k = 0; k < n; k++) {
            float *yk = y + (i * n + k) * d;
            const float *c = comb + i * n * n + k, p = post[i * n + k];
            memset(yk, 0, d * sizeof(float));
            for (int64_t j = 0; j < n; j++) axpy(yk, c[j * n], x + (i * n + j) * d, d);
            axpy(yk, p, out + i * d, d);
        }
}

/* ---- routed experts for a few tokens, as kernels.triton.ref.moe.fused_moe (dense weights):
   out[t] = sum_k weights[t][k] * W2_e(silu(min(W1_e x, limit)) * clamp(W3_e x, +-limit)), e = ids[t][k] */
#define MAX_INTER 8192

void banyan_moe_experts(const float *x, int64_t t, int64_t d, int64_t inter, const int64_t *ids, const float *weights,
                        int64_t k, const float *w1, const float *w3, const float *w2, float limit, float *out) {
    float h[MAX_INTER];
    for (int64_t i = 0; i < t; i++) {
        const float *xi = x + i * d;
        float *oi = out + i * d;
        memset(oi, 0, d * sizeof(float));
        for (int64_t c = 0; c < k; c++) {
            int64_t e = ids[i * k + c];
            const float *g = w1 + e * inter * d, *u = w3 + e * inter * d, *down = w2 + e * d * inter;
            for (int64_t r = 0; r < inter; r++) {
                float gate = dot(g + r * d, xi, d), up = dot(u + r * d, xi, d);
                gate = gate < limit ? gate : limit;
                up = up < -limit ? -limit : up > limit ? limit : up;
                h[r] = gate / (1.0f + expf(-gate)) * up;
            }
            float w = weights[i * k + c];
            for (int64_t j = 0; j < d; j++) oi[j] += w * dot(down + j * inter, h, inter);
        }
    }
}

/* ---- MoE routing, as kernels.triton.ref.moe.route: scores = sqrt(softplus(logits)) (softplus
   is x above 20, as torch's); experts = the top-k of scores + bias, or hash[tokens[t]] on hash
   layers; weights = the chosen scores / (their sum + 1e-20) * scale. Returns 0 (having written
   nothing) when a token is outside the hash table's `vocab` rows. */
int banyan_route(const float *logits, int64_t t, int64_t e, const float *bias, const int64_t *hash, int64_t vocab,
                 const int64_t *tokens, int64_t k, float scale, int64_t *ids, float *weights) {
    float score[MAX_EXPERTS];
    for (int64_t i = 0; hash && i < t; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab) return 0;
    for (int64_t i = 0; i < t; i++) {
        const float *li = logits + i * e;
        int64_t *ii = ids + i * k;
        float *wi = weights + i * k;
        for (int64_t x = 0; x < e; x++) score[x] = sqrtf(li[x] > 20.0f ? li[x] : log1pf(expf(li[x])));
        if (hash) {
            for (int64_t c = 0; c < k; c++) ii[c] = hash[tokens[i] * k + c];
        } else {  /* insertion into the k best so far, best first; a tie keeps the lower expert */
            float best[MAX_EXPERTS];
            int64_t n = 0;
            for (int64_t x = 0; x < e; x++) {
                float v = score[x] + bias[x];
                if (n == k && !(v > best[k - 1])) continue;
                int64_t at = n < k ? n++ : k - 1;
                while (at > 0 && v > best[at - 1]) { best[at] = best[at - 1]; ii[at] = ii[at - 1]; at--; }
                best[at] = v;
                ii[at] = x;
            }
        }
        float sum = 0.0f;
        for (int64_t c = 0; c < k; c++) sum += wi[c] = score[ii[c]];
        for (int64_t c = 0; c < k; c++) wi[c] = wi[c] / (sum + 1e-20f) * scale;
    }
    return 1;
}

/* ---- a whole MoE layer for a few tokens over dense weights, as kernels.composed.moe_layer:
   logits = gate x [T, E]; ids, weights = banyan_route; out = the routed experts (banyan_moe_experts)
   plus, when s1 is given, the shared expert (one expert of weight 1). Returns 0 (having written
   nothing) where the route declines or memory runs out. */
int banyan_moe_layer(const float *x, int64_t t, int64_t d, const float *gate, int64_t e, const float *bias,
                     const int64_t *hash, int64_t vocab, const int64_t *tokens, int64_t k, float scale, int64_t inter,
                     const float *w1, const float *w3, const float *w2, const float *s1, const float *s3,
                     const float *s2, int64_t shared_inter, float limit, float *out) {
    float *logits = malloc((size_t)(t * e) * sizeof(float)), *weights = malloc((size_t)(t * k) * sizeof(float));
    float *shared = malloc((size_t)(t * d) * sizeof(float)), *ones = malloc((size_t)t * sizeof(float));
    int64_t *ids = malloc((size_t)(t * k) * sizeof(int64_t)), *zeros = calloc((size_t)t, sizeof(int64_t));
    int ok = logits && weights && shared && ones && ids && zeros;
    for (int64_t i = 0; ok && i < t; i++) gemv(gate, x + i * d, e, d, logits + i * e);
    ok = ok && banyan_route(logits, t, e, bias, hash, vocab, tokens, k, scale, ids, weights);
    if (ok) {
        banyan_moe_experts(x, t, d, inter, ids, weights, k, w1, w3, w2, limit, out);
        if (s1) {
            for (int64_t i = 0; i < t; i++) ones[i] = 1.0f;
            banyan_moe_experts(x, t, d, shared_inter, zeros, ones, 1, s1, s3, s2, limit, shared);
            for (int64_t i = 0; i < t * d; i++) out[i] += shared[i];
        }
    }
    free(logits); free(weights); free(shared); free(ones); free(ids); free(zeros);
    return ok;
}

/* ---- RMS norm (times weight, when given) then RoPE of the trailing 2 * half channels of each
   of `rows` rows of d (`per_token` rows share token r / per_token's rotation, rope[t][i] =
   (cos, sin)); row r goes to out[dest[r]] (skipped when dest[r] < 0), or to out[r] without dest */
void banyan_norm_rope(const float *x, int64_t rows, int64_t d, int64_t per_token, const float *weight, float eps,
                      const float *rope, int64_t half, float *out, const int64_t *dest) {
    for (int64_t r = 0; r < rows; r++) {
        int64_t to = dest ? dest[r] : r;
        if (to < 0) continue;
        const float *xr = x + r * d;
        float *o = out + to * d;
        float inv = 1.0f / sqrtf(dot(xr, xr, d) / (float)d + eps);
        for (int64_t j = 0; j < d; j++) o[j] = weight ? xr[j] * inv * weight[j] : xr[j] * inv;
        if (rope) rotate(o + d - 2 * half, rope + (r / per_token) * half * 2, half);
    }
}

/* ---- the attention prologue for a few tokens over dense weights, as kernels.composed.attention_prologue:
   qr[t] = rms(wq_a x[t]) * qn_w; q[t][h] = rope(rms(wq_b qr[t])[h]); pool[slots[t]] = rope(rms(wkv x[t]) * kvn_w)
   (slot -1: not written). Returns 0 (having written nothing) when a row is wider than MAX_WIDE. */
#define MAX_WIDE 8192

int banyan_attn_prologue(const float *x, int64_t t, int64_t d, const float *wq_a, int64_t r, const float *qn_w,
                         const float *wq_b, int64_t h, int64_t hd, const float *wkv, const float *kvn_w, float eps,
                         const float *rope, int64_t half, float *qr, float *q, float *pool, const int64_t *slots) {
    if (r > MAX_WIDE || hd > MAX_WIDE) return 0;
    float row[MAX_WIDE];
    for (int64_t i = 0; i < t; i++) {
        const float *xi = x + i * d, *rot = rope + i * half * 2;
        float *qri = qr + i * r, *qi = q + i * h * hd;
        gemv(wq_a, xi, r, d, row);
        banyan_norm_rope(row, 1, r, 1, qn_w, eps, NULL, 0, qri, NULL);
        gemv(wq_b, qri, h * hd, r, qi);
        banyan_norm_rope(qi, h, hd, h, NULL, eps, rot, half, qi, NULL);
        gemv(wkv, xi, hd, d, row);
        banyan_norm_rope(row, 1, hd, 1, kvn_w, eps, rot, half, pool, slots + i);
    }
    return 1;
}

/* ---- sparse attention then the output projections for a few queries, as
   kernels.composed.attention_output: o = attention (see banyan_sparse_attention) [T, H*D];
   z[t][g] = wo_a[g] o[t][g] (groups of H*D/G channels, wo_a [G*R, H*D/G]); out[t] = wo_b z[t]
   (wo_b [dout, G*R]). Returns 0 (having written nothing) where the attention declines. */
int banyan_attn_output(const float *q, int64_t t, int64_t h, int64_t d, const float *kv, const int64_t *idx,
                       const int64_t *len, int64_t ks, const float *extra, const int64_t *eidx, const int64_t *elen,
                       int64_t kx, const float *sink, float scale, const float *rope, int64_t half,
                       const float *wo_a, int64_t groups, int64_t rank, const float *wo_b, int64_t dout, float *out) {
    int64_t width = h * d / groups;
    if (groups * rank > MAX_WIDE) return 0;
    float *att = malloc((size_t)(t * h * d) * sizeof(float)), z[MAX_WIDE];
    if (!att) return 0;
    int done = banyan_sparse_attention(q, t, h, d, kv, idx, len, ks, extra, eidx, elen, kx, sink, scale, rope, half, att);
    for (int64_t i = 0; done && i < t; i++) {
        for (int64_t g = 0; g < groups; g++)
            gemv(wo_a + g * rank * width, att + i * h * d + g * width, rank, width, z + g * rank);
        gemv(wo_b, z, dout, groups * rank, out + i * dout);
    }
    free(att);
    return done;
}

/* ---- compressor windows closing, as kernels.composed.compress_emit over fp32 rows, ring and pool:
   entry i pools its s slots, slot j's row being rows[src[1]] when src[0] (this batch) else ring[src[2]]
   (rows and ring [.., 2, w]: kv then score), empty when src[3] == 0; with overlap, slots j < s/2 take
   channels [0, d) and the others [d, 2d). Per channel a softmax over the slots' scores weights their
   kv; the pooled row is RMS-normed (weight), RoPE'd by rope[i] and stored at pool[slots[i]] (-1:
   skipped). src is [4][e * s]. Returns 0 (having written nothing) when d > MAX_WIDE. */
int banyan_compress_emit(const float *rows, const float *ring, int64_t w, const int64_t *src, int64_t e, int64_t s,
                         int64_t d, int overlap, const float *weight, float eps, const float *rope, int64_t half,
                         float *pool, const int64_t *slots) {
    if (d > MAX_WIDE) return 0;
    const int64_t n = e * s, *batch = src, *token = src + n, *ring_row = src + 2 * n, *valid = src + 3 * n;
    float top[MAX_WIDE], total[MAX_WIDE], pooled[MAX_WIDE];
    for (int64_t i = 0; i < e; i++) {
        for (int64_t c = 0; c < d; c++) { top[c] = -INFINITY; total[c] = 0.0f; pooled[c] = 0.0f; }
        for (int pass = 0; pass < 2; pass++)  /* channel maxima, then the softmax sums and weighted kv */
            for (int64_t j = 0; j < s; j++) {
                int64_t at = i * s + j;
                if (!valid[at]) continue;
                const float *row = batch[at] ? rows + token[at] * 2 * w : ring + ring_row[at] * 2 * w;
                const float *kv = row + (overlap && j >= s / 2 ? d : 0), *score = kv + w;
                if (pass == 0)
                    for (int64_t c = 0; c < d; c++) top[c] = score[c] > top[c] ? score[c] : top[c];
                else
                    for (int64_t c = 0; c < d; c++) {
                        float weight_c = expf(score[c] - top[c]);
                        total[c] += weight_c;
                        pooled[c] += kv[c] * weight_c;
                    }
            }
        for (int64_t c = 0; c < d; c++) pooled[c] /= total[c];
        banyan_norm_rope(pooled, 1, d, 1, weight, eps, rope + i * half * 2, half, pool, slots + i);
    }
    return 1;
}

/* ---- bf16-weight GEMV: y[r][v] = sum_k x[r][k] * w[v][k], w packed as p[v / PANEL][k][v % PANEL] */


static inline vec_f32 load_bf16(const uint16_t *p) {
    vec_u32 u;
    for (int l = 0; l < VEC; l++) u[l] = (uint32_t)p[l] << 16;
    vec_f32 f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* `rb` rows of x times one panel into y; inlined with a constant `rb`, so the accumulators
   stay in registers (a run-time row count sends them to the stack on every step). */
static inline __attribute__((always_inline)) void gemv_block(const float *xr, int rb, int64_t k,
                                                             const uint16_t *panel, float *y, int64_t v,
                                                             int64_t width) {
    vec_f32 acc[ROW_BLOCK][PV] = {{{0}}};
    for (int64_t j = 0; j < k; j++)
        for (int c = 0; c < PV; c++) {
            vec_f32 w = load_bf16(panel + j * PANEL + c * VEC);
            for (int r = 0; r < rb; r++) acc[r][c] += xr[r * k + j] * w;
        }
    for (int r = 0; r < rb; r++)
        for (int64_t l = 0; l < width; l++) y[r * v + l] = LANE(acc[r], l);
}

static void gemv_panels(const float *x, int64_t rows, int64_t k, const uint16_t *p, int64_t v, float *y,
                        int64_t first, int64_t last) {
    for (int64_t pi = first; pi < last; pi++) {
        const uint16_t *panel = p + pi * k * PANEL;
        int64_t v0 = pi * PANEL, width = v - v0 < PANEL ? v - v0 : PANEL;
        for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
            const float *xr = x + r0 * k;
            float *yr = y + r0 * v + v0;
            switch (rows - r0 < ROW_BLOCK ? rows - r0 : ROW_BLOCK) {
                case 1: gemv_block(xr, 1, k, panel, yr, v, width); break;
                case 2: gemv_block(xr, 2, k, panel, yr, v, width); break;
                case 3: gemv_block(xr, 3, k, panel, yr, v, width); break;
                default: gemv_block(xr, ROW_BLOCK, k, panel, yr, v, width);
            }
        }
    }
}

/* Chunks 0..n-1 of a job, done by up to `threads` threads (the caller's among them), each taking the
   next chunk nobody has: a thread that starts late or shares its core with another process does
   fewer chunks instead of holding up the call with a fixed share. A chunk's result does not depend
   on the thread that does it. */
typedef void (*chunk_fn)(const void *ctx, int64_t chunk);
typedef struct { chunk_fn fn; const void *ctx; int64_t n, next; } chunk_queue;

static void *chunk_worker(void *arg) {
    chunk_queue *q = arg;
    for (int64_t c; (c = __atomic_fetch_add(&q->next, 1, __ATOMIC_RELAXED)) < q->n;) q->fn(q->ctx, c);
    return NULL;
}

static void run_chunks(chunk_fn fn, const void *ctx, int64_t n, int64_t threads) {
    chunk_queue q = {fn, ctx, n, 0};
    pthread_t tid[MAX_THREADS];
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > n) threads = n;
    int64_t started = 1;
    for (; started < threads; started++)
        if (pthread_create(&tid[started], NULL, chunk_worker, &q) != 0) break;
    chunk_worker(&q);
    for (int64_t i = 1; i < started; i++) pthread_join(tid[i], NULL);
}

#define GEMV_CHUNK 64  /* panels per chunk: 1,024 output rows */

typedef struct { const float *x; int64_t rows, k; const uint16_t *p; int64_t v; float *y; int64_t panels; } gemv_job;

static void gemv_chunk(const void *ctx, int64_t c) {
    const gemv_job *j = ctx;
    int64_t last = (c + 1) * GEMV_CHUNK < j->panels ? (c + 1) * GEMV_CHUNK : j->panels;
    gemv_panels(j->x, j->rows, j->k, j->p, j->v, j->y, c * GEMV_CHUNK, last);
}

void banyan_bf16_gemv(const float *x, int64_t rows, int64_t k, const uint16_t *p, int64_t v, float *y,
                      int64_t threads) {
    int64_t panels = (v + PANEL - 1) / PANEL;
    gemv_job job = {x, rows, k, p, v, y, panels};
    run_chunks(gemv_chunk, &job, (panels + GEMV_CHUNK - 1) / GEMV_CHUNK, threads);
}

/* ---- indexer scores of single queries, heads on the vector lanes:
   out[t][w] = sum_h weights[t][h] * relu(sum_j qt[t][j][h] * keys[cand[t][w]][j]) for w < visible[t],
   else -inf; qt is q transposed to [T, d, H]; cand[t] starts t * cand_stride in (0: shared by all queries). KEY_BLOCK keys at a time keep that many
   independent accumulator chains in flight. */
#define KEY_BLOCK 8  /* a power of two: lane_sums pairs its vectors */
/* Rows of the candidates this far ahead are prefetched: a decode query's candidates are its
   request's pages, consecutive rows a page at a time, which the hardware prefetcher restarts on at
   every page; with the keys out of cache (a step streams the weights and the head between two
   reads of a layer's keys), 8K candidates scored ~20% faster. */
#define PREFETCH_AHEAD 64

typedef int32_t vec_i32 __attribute__((vector_size(VEC * 4)));

/* Shuffle masks of one level of lane_sums, as constants: a and b each hold VEC / s keys' partial
   sums in s lanes; lane k of their pair sum is key k / (s/2) of a then of b, part k % (s/2), the
   sum of that key's lane k % (s/2) (PAIR_LO) and the one half a block later (PAIR_HI). */
#define HALF(s) ((s) > 1 ? (s) / 2 : 1)
#define PAIR_LO(s, k) ((k) / HALF(s) < VEC / (s) ? (k) / HALF(s) * (s) + (k) % HALF(s) \
                                                 : VEC + ((k) / HALF(s) - VEC / (s)) * (s) + (k) % HALF(s))
#define PAIR_HI(s, k) (PAIR_LO(s, k) + HALF(s))
#if VEC == 16
#define LANE_LIST(F, s) {F(s, 0), F(s, 1), F(s, 2), F(s, 3), F(s, 4), F(s, 5), F(s, 6), F(s, 7), F(s, 8), F(s, 9), \
                         F(s, 10), F(s, 11), F(s, 12), F(s, 13), F(s, 14), F(s, 15)}
#elif VEC == 8
#define LANE_LIST(F, s) {F(s, 0), F(s, 1), F(s, 2), F(s, 3), F(s, 4), F(s, 5), F(s, 6), F(s, 7)}
#else
#define LANE_LIST(F, s) {F(s, 0), F(s, 1), F(s, 2), F(s, 3)}
#endif
#define SUM_LEVEL(s)                                                                                 \
    if (n > 1 && (s) > 1) {                                                                          \
        const vec_i32 lo = LANE_LIST(PAIR_LO, s), hi = LANE_LIST(PAIR_HI, s);                        \
        for (int i = 0; i < n / 2; i++)                                                              \
            t[i] = __builtin_shuffle(t[2 * i], t[2 * i + 1], lo) + __builtin_shuffle(t[2 * i], t[2 * i + 1], hi); \
        n /= 2;                                                                                      \
        width = HALF(s);                                                                             \
    }

/* out[b] = the sum of t[b]'s lanes for b < KEY_BLOCK (8), as a tree across the vectors: each level
   pairs them and adds the two halves of every key's lanes, so one pair of shuffles and one add
   serve two vectors' keys, where summing each vector's lanes in turn takes VEC scalar adds per key.
   t is overwritten. */
static inline void lane_sums(vec_f32 *t, float *out) {
    int n = KEY_BLOCK, width = VEC;  /* n vectors, each holding VEC / width keys' sums in width lanes */
    SUM_LEVEL(VEC) SUM_LEVEL(VEC / 2) SUM_LEVEL(VEC / 4)
    for (int i = 0; i < n; i++)
        for (int kb = 0; kb < VEC / width; kb++) {
            float sum = t[i][kb * width];
            for (int o = 1; o < width; o++) sum += t[i][kb * width + o];
            out[i * (VEC / width) + kb] = sum;
        }
}

/* Candidates [first, last) of one query; rows of candidates before `ahead_end` (its visible ones)
   are prefetched PREFETCH_AHEAD ahead, past `last` too. */
static void score_keys(const float *qi, const float *wi, int64_t h, int64_t d, const float *keys, const int64_t *ci,
                       float *oi, int64_t first, int64_t last, int64_t ahead_end) {
    for (int64_t w0 = first; w0 < last; w0 += KEY_BLOCK) {
        int64_t nb = last - w0 < KEY_BLOCK ? last - w0 : KEY_BLOCK;
        const float *key[KEY_BLOCK];
        for (int64_t b = 0; b < KEY_BLOCK; b++) key[b] = keys + ci[w0 + (b < nb ? b : 0)] * d;
        if (w0 + PREFETCH_AHEAD + KEY_BLOCK <= ahead_end)
            for (int64_t b = 0; b < KEY_BLOCK; b++) {
                const char *row = (const char *)(keys + ci[w0 + PREFETCH_AHEAD + b] * d);
                for (int64_t at = 0; at < d * (int64_t)sizeof(float); at += 64) __builtin_prefetch(row + at);
            }
        vec_f32 tot[KEY_BLOCK] = {{0}};  /* per key: weights * relu(dots), VEC heads on the lanes */
        int64_t h0 = 0;
        for (; h0 + VEC <= h; h0 += VEC) {
            vec_f32 acc[KEY_BLOCK] = {{0}}, qv, wv, zero = {0};
            for (int64_t j = 0; j < d; j++) {
                memcpy(&qv, qi + j * h + h0, sizeof qv);
                for (int b = 0; b < KEY_BLOCK; b++) acc[b] = FMADD(acc[b], qv, key[b][j]);
            }
            memcpy(&wv, wi + h0, sizeof wv);
            for (int b = 0; b < KEY_BLOCK; b++) tot[b] += (vec_f32)((vec_u32)acc[b] & (vec_u32)(acc[b] > zero)) * wv;
        }
        float score[KEY_BLOCK];
        lane_sums(tot, score);
        for (; h0 < h; h0++)
            for (int64_t b = 0; b < nb; b++) {
                float dot = 0.0f;
                for (int64_t j = 0; j < d; j++) dot += qi[j * h + h0] * key[b][j];
                score[b] += wi[h0] * (dot > 0.0f ? dot : 0.0f);
            }
        for (int64_t b = 0; b < nb; b++) oi[w0 + b] = score[b];
    }
}

typedef struct {
    const float *qt, *weights, *keys; const int64_t *cand, *visible; float *out;
    int64_t t, h, d, e, cand_stride, parts;
} score_job;

#define KEY_TILE 64  /* candidates scored by every query of a job before the next ones (they stay in L1) */
#define SCORE_CHUNK 512  /* a few queries' work is split into chunks of this many candidates */

static int64_t seen_by(const score_job *j, int64_t i) {
    int64_t v = j->visible[i];
    return v < 0 ? 0 : v < j->e ? v : j->e;
}

static void score_range(const score_job *j, int64_t i, int64_t first, int64_t last) {
    int64_t hd = j->d * j->h;
    score_keys(j->qt + i * hd, j->weights + i * j->h, j->h, j->d, j->keys, j->cand + i * j->cand_stride,
               j->out + i * j->e, first, last, seen_by(j, i));
}

/* With a few queries, chunk c is candidates [c' * SCORE_CHUNK, +SCORE_CHUNK) of query c / per_query
   (c' = c % per_query). */
static void score_few(const void *ctx, int64_t c) {
    const score_job *j = ctx;
    int64_t per_query = (j->e + SCORE_CHUNK - 1) / SCORE_CHUNK, i = c / per_query;
    int64_t first = c % per_query * SCORE_CHUNK, seen = seen_by(j, i);
    if (first < seen) score_range(j, i, first, first + SCORE_CHUNK < seen ? first + SCORE_CHUNK : seen);
}

/* With many (a prefill slab), chunk c of `parts` is every parts-th query from c, tile by tile of
   KEY_TILE candidates so that each tile is read from memory once for all of them. */
static void score_many(const void *ctx, int64_t c) {
    const score_job *j = ctx;
    int64_t most = 0;
    for (int64_t i = c; i < j->t; i += j->parts) most = seen_by(j, i) > most ? seen_by(j, i) : most;
    for (int64_t w0 = 0; w0 < most; w0 += KEY_TILE)
        for (int64_t i = c; i < j->t; i += j->parts) {
            int64_t seen = seen_by(j, i), last = w0 + KEY_TILE < seen ? w0 + KEY_TILE : seen;
            if (w0 < last) score_range(j, i, w0, last);
        }
}

void banyan_indexer_scores(const float *qt, const float *weights, int64_t t, int64_t h, int64_t d,
                           const float *keys, const int64_t *cand, int64_t cand_stride, const int64_t *visible,
                           int64_t e, float *out, int64_t threads) {
    for (int64_t i = 0; i < t; i++)
        for (int64_t w = visible[i] < 0 ? 0 : visible[i]; w < e; w++) out[i * e + w] = -INFINITY;
    if (threads < 1) threads = 1;  /* score_many's stride */
    score_job job = {qt, weights, keys, cand, visible, out, t, h, d, e, cand_stride, threads};
    if (t < 2 * threads)
        run_chunks(score_few, &job, t * ((e + SCORE_CHUNK - 1) / SCORE_CHUNK), threads);
    else
        run_chunks(score_many, &job, threads, threads);
}

/* ---- top-k candidates of scored rows: rows[i][c] = cand[i * cand_stride + w] of row i's c-th best
   finite score (best first; an equal score keeps the earlier candidate), -1 past the finite ones */
#define MAX_TOPK 4096

void banyan_topk_rows(const float *scores, int64_t t, int64_t e, int64_t k, const int64_t *cand,
                      int64_t cand_stride, int64_t *rows) {
    float best[MAX_TOPK];
    int64_t where[MAX_TOPK];
    for (int64_t i = 0; i < t; i++) {
        const float *si = scores + i * e;
        int64_t n = 0;
        for (int64_t w = 0; w < e; w++) {
            float v = si[w];
            if (!(v > -INFINITY) || (n == k && !(v > best[k - 1]))) continue;
            int64_t at = n < k ? n++ : k - 1;
            while (at > 0 && v > best[at - 1]) { best[at] = best[at - 1]; where[at] = where[at - 1]; at--; }
            best[at] = v;
            where[at] = w;
        }
        for (int64_t c = 0; c < k; c++) rows[i * k + c] = c < n ? cand[i * cand_stride + where[c]] : -1;
    }
}

/* ---- the lightning indexer for one query per row, as kernels.composed.indexer_select over dense
   weights: for row i (token tok[i]), q = RoPE of (wq_b qr[tok]) per head [H, hd], w = (wproj x[tok]) *
   scale, then banyan_indexer_scores over its candidates cand[i] [E] and banyan_topk_rows: its k best
   into rows[tok[i]]. Returns 0 (having written nothing) when out of memory. */
int banyan_indexer_decode(const float *x, const float *qr, int64_t d, int64_t r, const int64_t *tok, int64_t g,
                          const float *wq_b, int64_t h, int64_t hd, const float *wproj, float scale,
                          const float *rope, int64_t half, const float *keys, const int64_t *cand, int64_t e,
                          const int64_t *visible, int64_t k, int64_t *rows, int64_t threads) {
    float *q = malloc((size_t)(g * h * hd) * sizeof(float)), *qt = malloc((size_t)(g * h * hd) * sizeof(float));
    float *w = malloc((size_t)(g * h) * sizeof(float)), *scores = malloc((size_t)(g * e) * sizeof(float));
    int64_t *best = malloc((size_t)(g * k) * sizeof(int64_t));
    int ok = q && qt && w && scores && best;
    for (int64_t i = 0; ok && i < g; i++) {
        int64_t ti = tok[i];
        float *qi = q + i * h * hd, *wi = w + i * h;
        gemv(wq_b, qr + ti * r, h * hd, r, qi);
        for (int64_t hh = 0; hh < h; hh++) {
            rotate(qi + hh * hd + hd - 2 * half, rope + ti * half * 2, half);
            for (int64_t j = 0; j < hd; j++) qt[(i * hd + j) * h + hh] = qi[hh * hd + j];
        }
        gemv(wproj, x + ti * d, h, d, wi);
        for (int64_t hh = 0; hh < h; hh++) wi[hh] *= scale;
    }
    if (ok) {
        banyan_indexer_scores(qt, w, g, h, hd, keys, cand, e, visible, e, scores, threads);
        banyan_topk_rows(scores, g, e, k, cand, e, best);
        for (int64_t i = 0; i < g; i++) memcpy(rows + tok[i] * k, best + i * k, k * sizeof(int64_t));
    }
    free(q); free(qt); free(w); free(scores); free(best);
    return ok;
}

/* ---- the first maximum of each row (NaN counts as the maximum), as `max(dim=-1).indices`:
   the maxima of blocks of ARGMAX_BLOCK entries in vector registers, then one scan of the first
   block holding the row's maximum (or of the row for its first NaN). */
#define ARGMAX_BLOCK 128

static int64_t first_index(const float *row, int64_t from, int64_t to, float value) {
    for (int64_t j = from; j < to; j++)
        if (value != value ? row[j] != row[j] : row[j] == value) return j;
    return from;
}

void banyan_argmax_rows(const float *x, int64_t t, int64_t v, int64_t *out) {
    for (int64_t i = 0; i < t; i++) {
        const float *row = x + i * v;
        float best = -INFINITY;
        int64_t block = 0, nan = 0, j = 0;
        for (; j + ARGMAX_BLOCK <= v && !nan; j += ARGMAX_BLOCK) {
            vec_f32 m, a;
            vec_u32 odd = {0};
            memcpy(&m, row + j, sizeof m);
            for (int64_t c = 0; c < ARGMAX_BLOCK; c += VEC) {
                memcpy(&a, row + j + c, sizeof a);
                vec_u32 gt = (vec_u32)(a > m);
                odd |= (vec_u32)(a != a);
                m = (vec_f32)(((vec_u32)a & gt) | ((vec_u32)m & ~gt));
            }
            float top = m[0];
            for (int l = 0; l < VEC; l++) { top = m[l] > top ? m[l] : top; nan |= odd[l]; }
            if (top > best) { best = top; block = j; }
        }
        for (int64_t k = j; k < v && !nan; k++) {  /* the tail: entries past the last whole block */
            nan = row[k] != row[k];
            if (row[k] > best) { best = row[k]; block = k; }
        }
        out[i] = nan ? first_index(row, 0, v, NAN) : first_index(row, block, v, best);
    }
}
"""


def _cache_dir() -> Path:
    home = Path(os.environ.get("BANYAN_HOME", Path.home() / ".cache" / "banyan"))
    return home / "native"


def _machine() -> str:
    """What -march=native compiles for: this CPU's feature flags (a shared $BANYAN_HOME may
    serve several machines)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.machine() + platform.processor()


def _build(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc, gcc or $CC) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "banyan_native.c", Path(tmp) / target.name
        src.write_text(_SOURCE)
        try:
            subprocess.run([compiler, *_FLAGS, str(src), "-o", str(out), "-lm"], check=True, capture_output=True,
                           timeout=120)
        except subprocess.CalledProcessError:  # a compiler without -march=native: the generic target
            flags = [f for f in _FLAGS if f != "-march=native"]
            subprocess.run([compiler, *flags, str(src), "-o", str(out), "-lm"], check=True, capture_output=True,
                           timeout=120)
        os.replace(out, target)  # atomic: a concurrent builder's copy is as good


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded helper library, built if needed; None when unavailable (see the docstring)."""
    if os.environ.get(ENV, "1") == "0":
        return None
    digest = hashlib.sha256((_SOURCE + " ".join(_FLAGS) + _machine()).encode()).hexdigest()[:16]
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
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.banyan_bf16_gemv.argtypes = [ptr, i64, i64, ptr, i64, ptr, i64]
    lib.banyan_bf16_gemv.restype = None
    lib.banyan_indexer_scores.argtypes = [ptr, ptr, i64, i64, i64, ptr, ptr, i64, ptr, i64, ptr, i64]
    lib.banyan_indexer_scores.restype = None
    lib.banyan_hc_pre.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, ctypes.c_float, ctypes.c_float, i64, ptr,
                                  ctypes.c_float, ptr, ptr, ptr]
    lib.banyan_hc_pre.restype = None
    lib.banyan_sparse_attention.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, i64, ptr, ptr, ptr, i64, ptr,
                                            ctypes.c_float, ptr, i64, ptr]
    lib.banyan_sparse_attention.restype = ctypes.c_int
    lib.banyan_moe_experts.argtypes = [ptr, i64, i64, i64, ptr, ptr, i64, ptr, ptr, ptr, ctypes.c_float, ptr]
    lib.banyan_moe_experts.restype = None
    lib.banyan_route.argtypes = [ptr, i64, i64, ptr, ptr, i64, ptr, i64, ctypes.c_float, ptr, ptr]
    lib.banyan_route.restype = ctypes.c_int
    lib.banyan_hc_post.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, ptr]
    lib.banyan_hc_post.restype = None
    lib.banyan_topk_rows.argtypes = [ptr, i64, i64, i64, ptr, i64, ptr]
    lib.banyan_topk_rows.restype = None
    lib.banyan_argmax_rows.argtypes = [ptr, i64, i64, ptr]
    lib.banyan_argmax_rows.restype = None
    lib.banyan_compressor_rows.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, i64, ptr]
    lib.banyan_compressor_rows.restype = None
    lib.banyan_norm_rope.argtypes = [ptr, i64, i64, i64, ptr, ctypes.c_float, ptr, i64, ptr, ptr]
    lib.banyan_norm_rope.restype = None
    lib.banyan_attn_prologue.argtypes = [ptr, i64, i64, ptr, i64, ptr, ptr, i64, i64, ptr, ptr, ctypes.c_float, ptr,
                                         i64, ptr, ptr, ptr, ptr]
    lib.banyan_attn_prologue.restype = ctypes.c_int
    lib.banyan_attn_output.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, i64, ptr, ptr, ptr, i64, ptr,
                                       ctypes.c_float, ptr, i64, ptr, i64, i64, ptr, i64, ptr]
    lib.banyan_attn_output.restype = ctypes.c_int
    lib.banyan_indexer_decode.argtypes = [ptr, ptr, i64, i64, ptr, i64, ptr, i64, i64, ptr, ctypes.c_float, ptr, i64,
                                          ptr, ptr, i64, ptr, i64, ptr, i64]
    lib.banyan_indexer_decode.restype = ctypes.c_int
    lib.banyan_moe_layer.argtypes = [ptr, i64, i64, ptr, i64, ptr, ptr, i64, ptr, i64, ctypes.c_float, i64, ptr, ptr,
                                     ptr, ptr, ptr, ptr, i64, ctypes.c_float, ptr]
    lib.banyan_moe_layer.restype = ctypes.c_int
    lib.banyan_compress_emit.argtypes = [ptr, ptr, i64, ptr, i64, i64, i64, ctypes.c_int, ptr, ctypes.c_float, ptr,
                                         i64, ptr, ptr]
    lib.banyan_compress_emit.restype = ctypes.c_int
    lib.banyan_hc_head.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, ctypes.c_float, ctypes.c_float, ptr,
                                   ctypes.c_float, ptr]
    lib.banyan_hc_head.restype = None
    return lib


def sinkhorn_(comb: torch.Tensor, eps: float, iters: int) -> bool:
    """Sinkhorn-normalise contiguous fp32 CPU `comb [T, n, n]` in place, as `kernels.mhc.sinkhorn`
    does; returns False (and leaves `comb` alone) where the native path does not apply."""
    lib = library()
    if (lib is None or not _cpu_f32(comb) or not comb.is_contiguous()
            or comb.dim() != 3 or not 0 < comb.shape[1] == comb.shape[2] <= MAX_N or iters < 1):
        return False
    lib.banyan_sinkhorn_f32(comb.data_ptr(), comb.shape[0], comb.shape[1], eps, iters)
    return True


HC_PRE_MAX_TOKENS = 16  # tokens up to which the native mix beats torch's ops (from 16, its matmul wins)


def _hc_operands(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor,
                 out_norm: torch.Tensor | None, mixes: int) -> tuple[torch.Tensor, ...] | None:
    """Contiguous (streams, fn, scale, base) of a native mHC mix with `mixes` rows of `fn`, or None
    where it does not apply (`hc_pre`, `hc_head`)."""
    t, n, d = streams.shape
    if (library() is None or not 0 < t <= HC_PRE_MAX_TOKENS or n > MAX_N or not _cpu_f32(streams, fn, scale, base)
            or fn.shape != (mixes, n * d)
            or (out_norm is not None and not (_cpu_f32(out_norm) and out_norm.is_contiguous()))):
        return None
    return streams.contiguous(), fn.contiguous(), scale.contiguous(), base.contiguous()


def hc_pre(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, norm_eps: float,
           eps: float, iters: int, out_norm: torch.Tensor | None = None, out_eps: float = 0.0
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """`kernels.mhc.hc_pre` for up to `HC_PRE_MAX_TOKENS` fp32 CPU tokens in one call, with `out_norm
    [D]` the collapsed rows then RMS-normed (`kernels.mhc.hc_pre_norm`); None where the native path
    does not apply. Its dot products and exponentials round differently from torch's (fp32
    rounding); the Sinkhorn loop is the same bit for bit."""
    t, n, d = streams.shape
    operands = _hc_operands(streams, fn, scale, base, out_norm, (2 + n) * n) if iters >= 1 else None
    if operands is None:
        return None
    x, fn, scale, base = operands
    collapsed, post, comb = x.new_empty(t, d), x.new_empty(t, n), x.new_empty(t, n, n)
    library().banyan_hc_pre(x.data_ptr(), t, n, d, fn.data_ptr(), scale.data_ptr(), base.data_ptr(), norm_eps, eps,
                            iters, None if out_norm is None else out_norm.data_ptr(), out_eps, collapsed.data_ptr(),
                            post.data_ptr(), comb.data_ptr())
    return collapsed, post, comb


def hc_head(streams: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, norm_eps: float,
            eps: float, out_norm: torch.Tensor | None = None, out_eps: float = 0.0) -> torch.Tensor | None:
    """`kernels.mhc.hc_head` for up to `HC_PRE_MAX_TOKENS` fp32 CPU tokens in one call, with `out_norm [D]`
    then the final RMS norm (`kernels.mhc.hc_head_norm`); None where the native path does not apply."""
    t, n, d = streams.shape
    operands = _hc_operands(streams, fn, scale, base, out_norm, n)
    if operands is None:
        return None
    x, fn, scale, base = operands
    out = x.new_empty(t, d)
    library().banyan_hc_head(x.data_ptr(), t, n, d, fn.data_ptr(), scale.data_ptr(), base.data_ptr(), norm_eps, eps,
                             None if out_norm is None else out_norm.data_ptr(), out_eps, out.data_ptr())
    return out


def compressor_rows(x: torch.Tensor, wkv: torch.Tensor, wgate: torch.Tensor, ape: torch.Tensor,
                    ape_index: torch.Tensor) -> torch.Tensor | None:
    """`kernels.triton.ref.attention.compressor_rows` over dense fp32 CPU weights for up to
    `PROLOGUE_MAX_TOKENS` tokens in one call; None where it does not apply."""
    lib = library()
    if (lib is None or x.dim() != 2 or not 0 < x.shape[0] <= PROLOGUE_MAX_TOKENS
            or not _cpu_f32(x, wkv, wgate, ape) or not (wkv.is_contiguous() and wgate.is_contiguous()
                                                         and ape.is_contiguous())):
        return None
    x, index = x.contiguous(), _int64(ape_index)
    w = wkv.shape[0]
    rows = x.new_empty(x.shape[0], 2, w)
    lib.banyan_compressor_rows(x.data_ptr(), x.shape[0], x.shape[1], wkv.data_ptr(), wgate.data_ptr(), ape.data_ptr(),
                               index.data_ptr(), w, rows.data_ptr())
    return rows


def hc_post(block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor,
            comb: torch.Tensor) -> torch.Tensor | None:
    """`kernels.mhc.hc_post` for up to `HC_PRE_MAX_TOKENS` fp32 CPU tokens in one call (`block_out
    [T, D]`, `streams [T, n, D]`, `post [T, n]`, `comb [T, n, n]`); None where it does not apply."""
    lib = library()
    t, n, d = streams.shape
    if lib is None or not 0 < t <= HC_PRE_MAX_TOKENS or not _cpu_f32(block_out, streams, post, comb):
        return None
    out, x, post, comb = block_out.contiguous(), streams.contiguous(), post.contiguous(), comb.contiguous()
    y = torch.empty_like(x)
    lib.banyan_hc_post(out.data_ptr(), x.data_ptr(), post.data_ptr(), comb.data_ptr(), t, n, d, y.data_ptr())
    return y


ATTENTION_MAX_QUERIES = 16  # queries up to which the native attention beats torch's batched matmuls


def sparse_attention(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, lengths: torch.Tensor,
                     sink: torch.Tensor, scale: float, extra: torch.Tensor | None = None,
                     extra_indices: torch.Tensor | None = None, extra_lengths: torch.Tensor | None = None,
                     inv_rope: torch.Tensor | None = None) -> torch.Tensor | None:
    """`kernels.sparse_attention.sparse_attention` over fp32 CPU pools for up to
    `ATTENTION_MAX_QUERIES` queries, in one call, with `inv_rope [T, rd/2]` (complex) rotating each
    output's trailing channels when given; None where the native path does not apply."""
    call = _attention_args(q, kv, indices, lengths, sink, scale, extra, extra_indices, extra_lengths, inv_rope)
    if call is None:
        return None
    out = torch.empty_like(q)
    return out if library().banyan_sparse_attention(*call[0], out.data_ptr()) else None


def attention_output(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, lengths: torch.Tensor,
                     sink: torch.Tensor, scale: float, extra: torch.Tensor | None, extra_indices: torch.Tensor | None,
                     extra_lengths: torch.Tensor | None, inv_rope: torch.Tensor | None, wo_a: torch.Tensor,
                     groups: int, wo_b: torch.Tensor) -> torch.Tensor | None:
    """`sparse_attention` then V4's output projections in one call: the `[T, H*D]` output in `groups`
    groups through `wo_a [G*R, H*D/G]` (dense fp32), their `[T, G*R]` concatenation through `wo_b
    [Dout, G*R]` -> `[T, Dout]`; None where the native path does not apply."""
    call = _attention_args(q, kv, indices, lengths, sink, scale, extra, extra_indices, extra_lengths, inv_rope)
    if (call is None or not _cpu_f32(wo_a, wo_b) or not (wo_a.is_contiguous() and wo_b.is_contiguous())
            or wo_a.shape[0] % groups or wo_a.shape[1] * groups != q.shape[1] * q.shape[2]
            or wo_b.shape[1] != wo_a.shape[0]):
        return None
    out = q.new_empty(q.shape[0], wo_b.shape[0])
    done = library().banyan_attn_output(*call[0], wo_a.data_ptr(), groups, wo_a.shape[0] // groups, wo_b.data_ptr(),
                                        wo_b.shape[0], out.data_ptr())
    return out if done else None


def _attention_args(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, lengths: torch.Tensor,
                    sink: torch.Tensor, scale: float, extra: torch.Tensor | None, extra_indices: torch.Tensor | None,
                    extra_lengths: torch.Tensor | None, inv_rope: torch.Tensor | None) -> tuple[list, list] | None:
    """The leading arguments of `banyan_sparse_attention` and `banyan_attn_output`, with the tensors
    they point into (kept alive until the call); None where the native attention does not apply."""
    tensors = [q, kv, sink] + ([extra] if extra is not None else [])
    if (library() is None or q.dim() != 3 or not 0 < q.shape[0] <= ATTENTION_MAX_QUERIES
            or not _cpu_f32(*tensors) or not all(a.is_contiguous() for a in tensors)
            or (inv_rope is not None and (inv_rope.dtype is not torch.complex64 or not inv_rope.is_cpu))):
        return None
    table = None if inv_rope is None else torch.view_as_real(inv_rope.resolve_conj()).contiguous()  # [T, rd/2, 2]
    t, h, d = q.shape
    idx, lens = _int64(indices), _int64(lengths)
    eidx, elens = (None, None) if extra is None else (_int64(extra_indices), _int64(extra_lengths))
    args = [q.data_ptr(), t, h, d, kv.data_ptr(), idx.data_ptr(), lens.data_ptr(), idx.shape[1],
            None if extra is None else extra.data_ptr(), None if eidx is None else eidx.data_ptr(),
            None if elens is None else elens.data_ptr(), 0 if eidx is None else eidx.shape[1], sink.data_ptr(), scale,
            None if table is None else table.data_ptr(), 0 if inv_rope is None else inv_rope.shape[-1]]
    return args, [table, idx, lens, eidx, elens]


def compress_emit(rows: torch.Tensor, ring: torch.Tensor, source: torch.Tensor, overlap: bool, weight: torch.Tensor,
                  eps: float, rope: torch.Tensor, pool: torch.Tensor, slots: torch.Tensor) -> bool:
    """`kernels.composed.compress_emit` (no QDQ) over fp32 CPU rows `[N, 2, W]`, ring and pool `[S, d]`
    in one call; False (nothing written) where the native path does not apply."""
    lib = library()
    d = pool.shape[-1]
    if (lib is None or source.dim() != 3 or rope.dtype is not torch.complex64 or not rope.is_cpu
            or not _cpu_f32(rows, ring, weight, pool) or not all(a.is_contiguous() for a in (rows, ring, pool))
            or rows.shape[-1] != (2 * d if overlap else d) or ring.shape[-2:] != rows.shape[1:]):
        return False
    src, dest = _int64(source), _int64(slots)
    table = torch.view_as_real(rope.resolve_conj()).contiguous()  # [E, rd/2, 2] (cos, sin)
    return bool(lib.banyan_compress_emit(rows.data_ptr(), ring.data_ptr(), rows.shape[-1], src.data_ptr(),
                                         src.shape[1], src.shape[2], d, int(overlap), weight.contiguous().data_ptr(),
                                         eps, table.data_ptr(), rope.shape[-1], pool.data_ptr(), dest.data_ptr()))


PROLOGUE_MAX_TOKENS = 16  # tokens up to which the native norm + RoPE beats torch's ops


def norm_rope(x: torch.Tensor, weight: torch.Tensor | None, eps: float, rope: torch.Tensor,
              pool: torch.Tensor | None = None, slots: torch.Tensor | None = None) -> torch.Tensor | None:
    """RMS norm of fp32 CPU `x [T, ..., D]` over D (times `weight [D]`), then RoPE of the
    trailing channels by the complex `rope [T, rd/2]`, for up to `PROLOGUE_MAX_TOKENS` tokens in
    one call: into a new tensor, or written to the rows `slots [T]` of `pool [S, D]` (-1: skipped;
    `x` then `[T, D]`). None where the native path does not apply."""
    lib = library()
    if (lib is None or not 0 < x.shape[0] <= PROLOGUE_MAX_TOKENS or rope.dtype != torch.complex64
            or not _cpu_f32(x) or not rope.is_cpu or (weight is not None and not _cpu_f32(weight))
            or (pool is not None and (pool.dtype != torch.float32 or not pool.is_contiguous() or x.dim() != 2))):
        return None
    x, d = x.contiguous(), x.shape[-1]
    rows = x.numel() // d
    table = torch.view_as_real(rope.resolve_conj()).contiguous()  # [T, rd/2, 2] (cos, sin)
    out = torch.empty_like(x) if pool is None else pool
    dest = None if slots is None else _int64(slots)
    lib.banyan_norm_rope(x.data_ptr(), rows, d, rows // x.shape[0], None if weight is None else weight.contiguous().data_ptr(),
                         eps, table.data_ptr(), rope.shape[-1], out.data_ptr(), None if dest is None else dest.data_ptr())
    return out


def attention_prologue(x: torch.Tensor, wq_a: torch.Tensor, q_norm: torch.Tensor, wq_b: torch.Tensor,
                       wkv: torch.Tensor, kv_norm: torch.Tensor, eps: float, heads: int, rope: torch.Tensor,
                       pool: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`kernels.composed.attention_prologue` (no QDQ) over dense fp32 CPU weights and an fp32 pool for up
    to `PROLOGUE_MAX_TOKENS` tokens in one call: `(q [T, heads, hd], qr [T, R])`, the kv rows written
    to `pool [S, hd]` at `slots [T]` (-1: skipped); None where the native path does not apply."""
    lib = library()
    t = x.shape[0]
    r, hd = wq_a.shape[0], wkv.shape[0]
    if (lib is None or x.dim() != 2 or not 0 < t <= PROLOGUE_MAX_TOKENS or rope.dtype is not torch.complex64
            or not rope.is_cpu or not _cpu_f32(x, wq_a, q_norm, wq_b, wkv, kv_norm, pool)
            or not all(w.is_contiguous() for w in (wq_a, q_norm, wq_b, wkv, kv_norm, pool))
            or wq_b.shape != (heads * hd, r) or pool.shape[-1] != hd):
        return None
    x, dest = x.contiguous(), _int64(slots)
    table = torch.view_as_real(rope.resolve_conj()).contiguous()  # [T, rd/2, 2] (cos, sin)
    qr, q = x.new_empty(t, r), x.new_empty(t, heads, hd)
    done = lib.banyan_attn_prologue(x.data_ptr(), t, x.shape[1], wq_a.data_ptr(), r, q_norm.data_ptr(),
                                    wq_b.data_ptr(), heads, hd, wkv.data_ptr(), kv_norm.data_ptr(), eps,
                                    table.data_ptr(), rope.shape[-1], qr.data_ptr(), q.data_ptr(), pool.data_ptr(),
                                    dest.data_ptr())
    return (q, qr) if done else None


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor | None:
    """RMS norm over the last dim of up to `PROLOGUE_MAX_TOKENS` rows of fp32 CPU `x` (times the
    fp32 `weight`, when given) in one call (torch's takes ~20 us at a [1, 64] row on a slow core);
    None where it does not apply."""
    lib = library()
    d = x.shape[-1]
    if (lib is None or d == 0 or not 0 < x.numel() // d <= PROLOGUE_MAX_TOKENS or not _cpu_f32(x)
            or (weight is not None and not _cpu_f32(weight))):
        return None
    x = x.contiguous()
    weight = None if weight is None else weight.contiguous()
    out = torch.empty_like(x)
    lib.banyan_norm_rope(x.data_ptr(), x.numel() // d, d, 1, None if weight is None else weight.data_ptr(), eps,
                         None, 0, out.data_ptr(), None)
    return out


MOE_MAX_TOKENS = 16  # tokens up to which the native experts beat torch's dense strategy
MAX_INTER = 8192  # largest expert intermediate size the native experts take


def swiglu_mlp(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, limit: float
               ) -> torch.Tensor | None:
    """One dense SwiGLU expert every token takes (`w1 / w3 [I, D]`, `w2 [D, I]`): the routed
    experts' loop with a single expert of weight 1; None where it does not apply."""
    t = x.shape[0]
    if not 0 < t <= MOE_MAX_TOKENS:
        return None
    ids, weights = _SINGLE_EXPERT[t]
    return _experts(x, ids, weights, 1, w1, w3, w2, limit)


def moe_experts(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
                w2: torch.Tensor, limit: float) -> torch.Tensor | None:
    """Routed experts over dense fp32 CPU weights for up to `MOE_MAX_TOKENS` tokens, each token
    through its own `k` experts only (`x [T, D]`, `ids / weights [T, k]`, `w1 / w3 [E, I, D]`,
    `w2 [E, D, I]`) -> `[T, D]` fp32; None where the native path does not apply."""
    if not 0 < x.shape[0] <= MOE_MAX_TOKENS:
        return None
    return _experts(x, _int64(ids), weights.contiguous(), ids.shape[1], w1, w3, w2, limit)


def _experts(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, k: int, w1: torch.Tensor, w3: torch.Tensor,
             w2: torch.Tensor, limit: float) -> torch.Tensor | None:
    """`banyan_moe_experts` over contiguous int64 `ids` / fp32 `weights` `[T, k]`; `w1 / w3 [..., I, D]`."""
    lib = library()
    if (lib is None or w1.shape[-2] > MAX_INTER
            or not _cpu_f32(x, weights, w1, w3, w2) or not (w1.is_contiguous() and w3.is_contiguous()
                                                             and w2.is_contiguous())):
        return None
    x = x.contiguous()
    out = torch.empty_like(x)
    lib.banyan_moe_experts(x.data_ptr(), x.shape[0], x.shape[1], w1.shape[-2], ids.data_ptr(), weights.data_ptr(),
                           k, w1.data_ptr(), w3.data_ptr(), w2.data_ptr(), limit, out.data_ptr())
    return out


def moe_layer(x: torch.Tensor, gate: torch.Tensor, bias: torch.Tensor | None, top_k: int, route_scale: float,
              tid2eid: torch.Tensor | None, input_ids: torch.Tensor | None, w1: torch.Tensor, w3: torch.Tensor,
              w2: torch.Tensor, shared: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, limit: float
              ) -> torch.Tensor | None:
    """`kernels.composed.moe_layer` over dense fp32 CPU weights for up to `MOE_MAX_TOKENS` tokens in one
    call: the gate `[E, D]`, routing (`route`), routed experts `w1 / w3 [E, I, D]`, `w2 [E, D, I]` and
    the optional shared expert `(w1, w3, w2)` -> `[T, D]`; None where the native path does not apply."""
    lib = library()
    t, e = x.shape[0], gate.shape[0]
    hashed = tid2eid is not None
    weights = (gate, w1, w3, w2) + (shared or ())
    if (lib is None or x.dim() != 2 or not 0 < t <= MOE_MAX_TOKENS or not 0 < top_k <= e <= MAX_EXPERTS
            or not _cpu_f32(x, *weights) or not all(w.is_contiguous() for w in weights)
            or max(w1.shape[-2], shared[0].shape[0] if shared else 0) > MAX_INTER
            or (not hashed and (bias is None or not _cpu_f32(bias)))
            or (hashed and (tid2eid.shape[1] != top_k or input_ids.numel() != t))):
        return None
    x = x.contiguous()
    bias = None if hashed else bias.contiguous()
    hash_rows, tokens = (_int64(tid2eid), _int64(input_ids)) if hashed else (None, None)
    s1, s3, s2 = shared or (None, None, None)
    out = torch.empty_like(x)
    done = lib.banyan_moe_layer(x.data_ptr(), t, x.shape[1], gate.data_ptr(), e, None if hashed else bias.data_ptr(),
                                hash_rows.data_ptr() if hashed else None, tid2eid.shape[0] if hashed else 0,
                                tokens.data_ptr() if hashed else None, top_k, route_scale, w1.shape[-2],
                                w1.data_ptr(), w3.data_ptr(), w2.data_ptr(), None if s1 is None else s1.data_ptr(),
                                None if s3 is None else s3.data_ptr(), None if s2 is None else s2.data_ptr(),
                                0 if s1 is None else s1.shape[0], limit, out.data_ptr())
    return out if done else None


# a single expert's routing (expert 0, weight 1) for each token count, made once
_SINGLE_EXPERT = [(torch.zeros(t, 1, dtype=torch.long), torch.ones(t, 1)) for t in range(MOE_MAX_TOKENS + 1)]


MAX_EXPERTS = 1024  # most routed experts the native router takes


def route(logits: torch.Tensor, bias: torch.Tensor | None, top_k: int, route_scale: float,
          tid2eid: torch.Tensor | None, input_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`kernels.triton.ref.moe.route` for up to `MOE_MAX_TOKENS` fp32 CPU rows of gate logits
    `[T, E]` in one call: (ids `[T, k]` int64, best first; weights `[T, k]` fp32), or None where
    the native path does not apply (a token outside `tid2eid` among them)."""
    lib = library()
    hashed = tid2eid is not None
    if (lib is None or not 0 < logits.shape[0] <= MOE_MAX_TOKENS or not 0 < top_k <= logits.shape[1] <= MAX_EXPERTS
            or not _cpu_f32(logits)
            or (not hashed and (bias is None or not _cpu_f32(bias)))
            or (hashed and (tid2eid.shape[1] != top_k or input_ids.numel() != logits.shape[0]))):
        return None
    logits, bias = logits.contiguous(), None if hashed else bias.contiguous()
    ids = torch.empty(logits.shape[0], top_k, dtype=torch.long)
    weights = logits.new_empty(logits.shape[0], top_k)
    hash_rows, tokens = (_int64(tid2eid), _int64(input_ids)) if hashed else (None, None)
    done = lib.banyan_route(logits.data_ptr(), logits.shape[0], logits.shape[1], 0 if hashed else bias.data_ptr(),
                            hash_rows.data_ptr() if hashed else 0, tid2eid.shape[0] if hashed else 0,
                            tokens.data_ptr() if hashed else 0, top_k, route_scale, ids.data_ptr(), weights.data_ptr())
    return (ids, weights) if done else None


def pack_bf16_panels(weight: torch.Tensor) -> torch.Tensor | None:
    """`weight [N, K]` as bf16 panels `[ceil(N / PANEL), K, PANEL]` (rows past N zero) for
    `bf16_gemv`; None when its values are not all bf16 (packing would round them)."""
    n, k = weight.shape
    packed = weight.detach().to(torch.bfloat16)
    if weight.dtype != torch.bfloat16 and not torch.equal(packed.to(weight.dtype), weight.detach()):
        return None
    padded = packed.new_zeros(-(-n // PANEL) * PANEL, k)
    padded[:n] = packed
    return padded.view(-1, PANEL, k).transpose(1, 2).contiguous().view(torch.int16)  # [P, K, PANEL]


def bf16_gemv(x: torch.Tensor, panels: torch.Tensor, out_features: int) -> torch.Tensor | None:
    """`x [M, K]` fp32 CPU times the weight `pack_bf16_panels` packed -> `[M, out_features]` fp32;
    None where the native path does not apply."""
    lib = library()
    if lib is None or not _cpu_f32(x) or x.dim() != 2 or x.shape[1] != panels.shape[1]:
        return None
    x = x.contiguous()
    out = x.new_empty(x.shape[0], out_features)
    lib.banyan_bf16_gemv(x.data_ptr(), x.shape[0], x.shape[1], panels.data_ptr(), out_features, out.data_ptr(),
                         _threads(panels.numel() * panels.element_size()))
    return out


def indexer_scores(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor, candidates: torch.Tensor,
                   visible: torch.Tensor) -> torch.Tensor | None:
    """Indexer scores: `q [T, H, d]`, `weights [T, H]`, `keys [S, d]` (fp32 CPU), `candidates
    [T, E]` key rows of each query (or `[1, E]` shared by all, as a prefill chunk's are),
    `visible [T]` leading candidates each query sees -> `[T, E]` fp32, `sum_h weights *
    relu(q_h . key)`, -inf past `visible`; None where the native path does not apply."""
    lib = library()
    if lib is None or q.dim() != 3 or not _cpu_f32(q, weights, keys) or not keys.is_contiguous():
        return None
    t, h, d = q.shape
    qt = q.transpose(1, 2).contiguous()  # [T, d, H]
    weights, cand, vis = weights.contiguous(), _int64(candidates), _int64(visible)
    out = q.new_empty(t, cand.shape[1])
    stride = 0 if cand.shape[0] == 1 else cand.shape[1]
    if stride and cand.shape[0] != t:
        return None
    lib.banyan_indexer_scores(qt.data_ptr(), weights.data_ptr(), t, h, d, keys.data_ptr(), cand.data_ptr(), stride,
                              vis.data_ptr(), cand.shape[1], out.data_ptr(), _threads(t * cand.shape[1] * d * 4))
    return out


def indexer_decode(x: torch.Tensor, qr: torch.Tensor, wq_b: torch.Tensor, weights_proj: torch.Tensor, heads: int,
                   rope: torch.Tensor, keys: torch.Tensor, tokens: torch.Tensor, candidates: torch.Tensor,
                   visible: torch.Tensor, topk: int) -> torch.Tensor | None:
    """`kernels.composed.indexer_select` for one group of single queries (`tokens [G]` of the `T` tokens
    of `x [T, D]`, `qr [T, R]`, each with its `candidates [G, E]`, `visible [G]` leading ones) over
    dense fp32 CPU weights and keys `[S, hd]`, in one call -> `[T, min(topk, E)]` int64 key rows, best
    first, -1 padded (rows of tokens outside the group too); None where it does not apply."""
    lib = library()
    g, e = candidates.shape
    hd = keys.shape[-1]
    k = min(topk, e)
    if (lib is None or x.dim() != 2 or not 0 < k <= MAX_TOPK or rope.dtype is not torch.complex64 or not rope.is_cpu
            or not _cpu_f32(x, qr, wq_b, weights_proj, keys)
            or not all(a.is_contiguous() for a in (wq_b, weights_proj, keys))
            or wq_b.shape != (heads * hd, qr.shape[1]) or weights_proj.shape != (heads, x.shape[1])):
        return None
    x, qr = x.contiguous(), qr.contiguous()
    table = torch.view_as_real(rope.resolve_conj()).contiguous()  # [T, rd/2, 2] (cos, sin)
    tok, cand, vis = _int64(tokens), _int64(candidates), _int64(visible)
    rows = torch.full((x.shape[0], k), -1, dtype=torch.long)
    done = lib.banyan_indexer_decode(x.data_ptr(), qr.data_ptr(), x.shape[1], qr.shape[1], tok.data_ptr(), g,
                                     wq_b.data_ptr(), heads, hd, weights_proj.data_ptr(), (heads * hd) ** -0.5,
                                     table.data_ptr(), rope.shape[-1], keys.data_ptr(), cand.data_ptr(), e,
                                     vis.data_ptr(), k, rows.data_ptr(), _threads(g * e * hd * 4))
    return rows if done else None


MAX_TOPK = 4096  # largest k the native top-k takes


def topk_rows(scores: torch.Tensor, k: int, candidates: torch.Tensor) -> torch.Tensor | None:
    """For `scores [T, E]` fp32 CPU (from `indexer_scores`) and `candidates [T or 1, >= E]` int64:
    `[T, k]` the candidates of each row's `k` best finite scores, best first, -1 past the finite
    ones (what `scores.topk` then a gather and a -inf mask give, in one pass); None where it
    does not apply."""
    lib = library()
    t, e = scores.shape
    if (lib is None or not 0 < k <= min(e, MAX_TOPK) or not _cpu_f32(scores) or not candidates.is_cpu
            or candidates.dtype is not torch.int64 or candidates.shape[1] < e or candidates.shape[0] not in (1, t)):
        return None
    scores, cand = scores.contiguous(), candidates.contiguous()
    rows = torch.empty(t, k, dtype=torch.long)
    lib.banyan_topk_rows(scores.data_ptr(), t, e, k, cand.data_ptr(), 0 if cand.shape[0] == 1 else cand.shape[1],
                         rows.data_ptr())
    return rows


def argmax_rows(x: torch.Tensor) -> torch.Tensor | None:
    """`x [T, V]` fp32 CPU -> `[T]` int64: each row's first maximum, a NaN counting as the maximum
    (what `x.max(dim=-1).indices` gives), in one vectorised pass; None where it does not apply."""
    lib = library()
    if lib is None or x.dim() != 2 or x.shape[1] == 0 or not _cpu_f32(x):
        return None
    x = x.contiguous()
    out = torch.empty(x.shape[0], dtype=torch.long)
    lib.banyan_argmax_rows(x.data_ptr(), x.shape[0], x.shape[1], out.data_ptr())
    return out


def _int64(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.int64 and x.is_contiguous() else x.to(torch.int64).contiguous()
