"""What every Triton kernel module shares: the interpreter switch, operand casts for
`tl.dot`, and the tensor views the interpreter accepts.

Without a CUDA device Triton can only run under its interpreter, and the interpreter must
be chosen before any `@triton.jit` runs, so importing this module (which every kernel
module does first) turns it on when no GPU is present. Kernels stay within triton 3.6's
API: that is what the GPU image ships.
"""

from __future__ import annotations

import dataclasses
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402  (after the interpreter switch)
import triton.language as tl  # noqa: E402

MIN_TRITON = (3, 6)
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

if tuple(int(p) for p in triton.__version__.split(".")[:2]) < MIN_TRITON:
    raise ImportError(f"banyan's Triton kernels need triton >= {'.'.join(map(str, MIN_TRITON))}, "
                      f"found {triton.__version__}")


def _direct_device_calls() -> None:
    """Under the interpreter, every call of a `@triton.jit` helper inside a kernel re-patches
    the `triton.language` modules its globals name (inspecting them: ~10 ms a call, most of a
    model run's time when helpers sit in loops). A module stays patched while the launch that
    patched it for its kernel runs, and one patched by a helper call stays patched for good
    (the interpreter never restores those), so a helper whose modules are all in either set
    runs directly. Applied only where triton's interpreter has the expected shape."""
    from triton.runtime import interpreter

    executor, function = getattr(interpreter, "GridExecutor", None), getattr(interpreter, "InterpretedFunction", None)
    if executor is None or function is None or not hasattr(function, "rewrite"):
        return
    launch, device_call = executor.__call__, function.__call__
    launches: list[set] = []  # the modules each running launch patched
    kept: set = set()  # modules patched by helper calls, never restored

    def languages(fn) -> set:
        return {v for v in fn.__globals__.values() if v is tl or v is tl.core}

    def counted_launch(self, *args, **kwargs):
        launches.append(languages(self.fn))
        try:
            return launch(self, *args, **kwargs)
        finally:
            launches.pop()

    def direct_call(self, *args, **kwargs):
        needed = languages(self.fn)
        if not launches or not needed <= launches[-1] | kept:
            result = device_call(self, *args, **kwargs)
            if launches:
                kept.update(needed - launches[-1])
            return result
        try:
            return self.rewrite()(*args, **kwargs)
        except Exception as e:
            raise interpreter.InterpreterError(repr(e)) from e

    executor.__call__, function.__call__ = counted_launch, direct_call
    # The interpreter also checks every int32 add and mul for overflow (half its time); at the
    # test shapes no offset comes near 2**31, and compiled kernels never check.
    builder = getattr(interpreter, "interpreter_builder", None)
    if builder is not None and hasattr(getattr(builder, "options", None), "sanitize_overflow"):
        builder.options = dataclasses.replace(builder.options, sanitize_overflow=False)


if INTERPRET:
    _direct_device_calls()

# The interpreter computes bf16 arithmetic on raw bit patterns, so under it every bf16 value
# is upcast right after its load and `tl.dot` runs in fp32; on a GPU dot operands stay bf16.
# Its fp32 -> bf16 casts truncate and its fp32 -> e4m3 casts lose the rounding carry, so
# under it `cast` rounds to nearest-even first. Kernels read the flag as a global constexpr.
_INTERPRET = tl.constexpr(INTERPRET)


def check_device(*tensors: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors under the interpreter."""
    for t in tensors:
        if t.device.type != "cuda" and not INTERPRET:
            raise RuntimeError(f"Triton kernels need CUDA tensors (got one on {t.device}); on CPU set "
                               "TRITON_INTERPRET=1 before importing them")


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """E8M0 scales, packed FP4 and int8 as uint8: the interpreter rejects the first two dtypes."""
    return t.view(torch.uint8) if t.element_size() == 1 and t.dtype != torch.float8_e4m3fn else t


def rope_arg(table: torch.Tensor) -> torch.Tensor:
    """A complex rotation table `[T, rd/2]` (`kernels.rope.rope_table`) as fp32 (cos, sin) pairs `[T, rd/2, 2]`."""
    return torch.view_as_real(table.resolve_conj())


def pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


@triton.jit
def dot_operand(x):
    """`x` as a `tl.dot` operand: fp32 under the interpreter, bf16 on a GPU."""
    if _INTERPRET:
        return x.to(tl.float32)
    return x.to(tl.bfloat16)


@triton.jit
def _nearest_bf16(x):
    """fp32 -> the fp32 value of its nearest-even bf16."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _nearest_e4m3(x):
    """fp32 with |x| <= 448 -> the fp32 value of its nearest-even e4m3."""
    exponent = ((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    step = ((tl.maximum(exponent, -6) - 3 + 127) << 23).to(tl.float32, bitcast=True)  # e4m3 spacing at x
    q = x / step
    r = tl.floor(q + 0.5)
    r = tl.where((r - q == 0.5) & (r - 2.0 * tl.floor(r * 0.5) == 1.0), r - 1.0, r)  # ties to even
    return r * step


@triton.jit
def cast(x, DTYPE: tl.constexpr):
    """`x.to(DTYPE)` rounding to nearest-even, as the GPU does (the interpreter needs help)."""
    if _INTERPRET:
        if DTYPE == tl.bfloat16:
            x = _nearest_bf16(x.to(tl.float32))
        elif DTYPE == tl.float8e4nv:
            x = _nearest_e4m3(x.to(tl.float32))
    return x.to(DTYPE)


@triton.jit
def e8m0_to_f32(b):
    """E8M0 bytes -> fp32 `2**(b - 127)`, exactly, from the exponent bits (bytes 0 and 255,
    2**-127 and NaN, never occur in V4 scales)."""
    return (b.to(tl.int32) << 23).to(tl.float32, bitcast=True)


@triton.jit
def pow2_ceil(x):
    """The smallest power of two >= positive normal fp32 `x`, from its bits (exact, unlike
    `exp2(ceil(log2(x)))` with the GPU's approximate log2)."""
    bits = x.to(tl.int32, bitcast=True)
    exponent = ((bits >> 23) & 0xFF) + tl.where((bits & 0x7FFFFF) != 0, 1, 0)
    return (exponent << 23).to(tl.float32, bitcast=True)


@triton.jit
def rotate_tail(x, table_row, D, ROPE_PAIRS: tl.constexpr):
    """RoPE of rows `x [R, BD]` (fp32, D real columns): the last `2 * ROPE_PAIRS` of the D dims
    rotate in interleaved pairs by one table row, `ROPE_PAIRS` fp32 (cos, sin) pairs at
    `table_row`; the pairs before them (and the padding) pass with cos 1, sin 0."""
    pair = tl.arange(0, x.shape[1] // 2) - (D // 2 - ROPE_PAIRS)  # index into the table row
    rotating = (pair >= 0) & (pair < ROPE_PAIRS)
    cos = tl.load(table_row + 2 * pair, mask=rotating, other=1.0)[None, :]
    sin = tl.load(table_row + 2 * pair + 1, mask=rotating, other=0.0)[None, :]
    even, odd = tl.split(tl.reshape(x, (x.shape[0], x.shape[1] // 2, 2)))
    return tl.reshape(tl.join(even * cos - odd * sin, even * sin + odd * cos), (x.shape[0], x.shape[1]))
