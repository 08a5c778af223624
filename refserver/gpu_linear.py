"""refserver's float32 CUDA linear for the few rows of a decode or verification step.

`rows_linear_cuda(x, w)` = x @ w.T (w [N, K]) for up to `MAX_ROWS` rows, as one Triton kernel:
each program reads a [BLOCK_N, K] stripe of the weight once for all rows. cuBLAS picks a
matrix-vector kernel for one row (~4 us for SmolLM2's layer weights on an H200) but, for the
K+1 = 6 rows of a verification, a tiled SIMT GEMM plus a split-K reduction (~10 + 2 us): a
verify step paid ~0.6 ms more in its 120 layer linears than a one-token step
(`benchmarks/gpu_step_profile.py`, docs/notes_i13.md). Here a row costs the same whether it
comes alone or with 7 others.

Row-invariant: a program loads its weight stripe once and reduces every row against it with
the same code (the rows are a static loop, not a dimension of the tile), so a row's result does
not depend on how many rows the call has or what they hold: verifying a draft computes bit for
bit the logits a one-token step would (as the CPU rows kernel, `refserver.rows_linear`). Not
cuBLAS's bits (another summation order); float32 throughout (no TF32).

`unavailable_reason()` is None where it runs (CUDA + Triton); otherwise why not, said once in
the log by `refserver.model.Linear`, which then uses F.linear.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

MAX_ROWS = 8  # rows per call: K+1 = 6 verify tokens, an MTP step of up to 8 rows
MAX_K = 2048  # the whole K of a weight stripe is one tile (SmolLM2: K = 576, 1152 or 1536)
TILE = 8192  # weight elements a program holds (BLOCK_N x BLOCK_K): 64 registers a thread


@functools.cache
def unavailable_reason() -> str | None:
    """None when Triton is importable and CUDA is there; else the reason."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"Triton is not importable ({exc})"
    return None


def fits(weight: Tensor) -> bool:
    """Whether the kernel can take this weight: float32 CUDA, contiguous 2-D, K <= MAX_K."""
    return (
        weight.dtype == torch.float32
        and weight.device.type == "cuda"
        and weight.dim() == 2
        and weight.is_contiguous()
        and weight.shape[1] <= MAX_K
    )


def blocks(k: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K): the whole of K in one tile (a power of two, masked past K), and as
    many output columns as fit in TILE elements."""
    block_k = 1 << max(k - 1, 1).bit_length()
    return max(TILE // block_k, 1), block_k


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    # M is not specialized: Triton makes an int argument equal to 1 a compile-time constant, and
    # `m < M` must stay a tensor for the masks (the first GPU run failed on exactly that).
    @triton.jit(do_not_specialize=["M"])
    def rows_linear_kernel(
        x_ptr,
        w_ptr,
        y_ptr,
        M,
        N,
        K,
        stride_xm,
        stride_wn,
        stride_ym,
        M_PAD: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        # One load of a [BLOCK_N, K] weight stripe (no loop over K: a loop of dependent loads
        # was latency-bound, ~1 us an iteration), then every row against it, each the same
        # reduction: a row's result does not depend on M or on the other rows.
        pid = tl.program_id(0)
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        n_ok = rn < N
        k_ok = rk < K
        w = tl.load(
            w_ptr + rn[:, None] * stride_wn + rk[None, :],
            mask=n_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        for m in tl.static_range(M_PAD):
            # Rows past M (M_PAD is M rounded up) do nothing; a tensor even if M is a constant.
            live = (tl.full([1], m, tl.int32) < M).to(tl.int32)
            x = tl.load(
                x_ptr + m * stride_xm + rk[None, :],
                mask=rk[None, :] < (K * live)[:, None],
                other=0.0,
            )
            y = tl.sum(w * x, axis=1)
            tl.store(y_ptr + m * stride_ym + rn, y, mask=rn < N * live)

    return rows_linear_kernel


def launch(x2: Tensor, weight: Tensor, out: Tensor, bn: int | None = None) -> Tensor:
    """out [M, N] = x2 [M, K] @ weight.T, M <= MAX_ROWS, through the kernel (no checks;
    `bn` overrides BLOCK_N, for benchmarks)."""
    M, K = x2.shape
    N = weight.shape[0]
    block_n, block_k = blocks(K)
    block_n = bn or block_n
    m_pad = 1 << max(M - 1, 0).bit_length()  # 1, 2, 4, 8: one compiled kernel per size
    grid = ((N + block_n - 1) // block_n,)
    _kernel()[grid](
        x2, weight, out, M, N, K, x2.stride(0), weight.stride(0), out.stride(0),
        M_PAD=m_pad, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
    )  # fmt: skip
    return out


@torch.library.custom_op("refserver_cuda::rows_linear", mutates_args=())
def _rows_linear_op(x: Tensor, weight: Tensor) -> Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    out = torch.empty((x2.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
    return launch(x2, weight, out).view(*x.shape[:-1], weight.shape[0])


@_rows_linear_op.register_fake
def _(x: Tensor, weight: Tensor) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def rows_linear_cuda(x: Tensor, weight: Tensor) -> Tensor:
    """x [..., K] @ weight.T -> [..., N], float32 on CUDA, at most MAX_ROWS rows, with the
    arguments checked here first (`refserver.model.Linear` checked its weight once, at freeze,
    and calls the op directly)."""
    if x.dtype != torch.float32 or x.device.type != "cuda":
        raise TypeError(f"rows_linear_cuda: x must be float32 on CUDA, got {x.dtype} on {x.device}")
    if not fits(weight) or weight.device != x.device:
        raise ValueError(
            f"rows_linear_cuda: weight must be a contiguous float32 [N, K] on {x.device} with K <= "
            f"{MAX_K}, got {weight.dtype} {tuple(weight.shape)} on {weight.device}"
        )
    rows = x.numel() // max(x.shape[-1], 1)
    if x.dim() == 0 or x.shape[-1] != weight.shape[1] or rows > MAX_ROWS:
        raise ValueError(
            f"rows_linear_cuda: x {tuple(x.shape)} must end in the weight's K = {weight.shape[1]}"
            f" and have at most {MAX_ROWS} rows"
        )
    return torch.ops.refserver_cuda.rows_linear(x, weight)
