"""refserver's float32 CUDA attention for the few query tokens of a decode or verification step.

`decode_attention(q, k_cache, v_cache, slots, positions, kv_len)`: the T <= MAX_QUERIES queries
of each row attend to the row's cache positions <= their own, as ONE Triton kernel. SDPA has no
float32 GQA kernel, so it took its math path: K/V expanded to every query head (a copy of the
read window), the scale, Q K^T, the mask, a safe softmax with its all-masked check, P V: ~9
kernels a layer, ~22 us at T = 1 and ~33 us at T = 6 for a 256-position window on an H200
(`benchmarks/gpu_kernel_probe.py`). Here a program is one (row, KV head): its G query heads x T
tokens are the rows of one tile against K/V read once from the cache (no expansion, no mask
tensor: visibility comes from the positions), with an online softmax over BLOCK_L-position
chunks of the window. float32 throughout (`input_precision="ieee"`: no TF32).

`unavailable_reason()` as in `refserver.gpu_linear` (the same requirement: CUDA + Triton).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from refserver.gpu_linear import unavailable_reason

MAX_QUERIES = 8  # tokens per row: K+1 = 6 verify tokens (a prefill takes SDPA)
BLOCK_L = 64  # cache positions per chunk

__all__ = ["MAX_QUERIES", "decode_attention", "unavailable_reason"]


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["T", "L"])  # as gpu_linear's M: no constant when == 1
    def decode_attention_kernel(
        q_ptr,  # [B, T, H, D]
        k_ptr,  # [S, Lmax, Hkv, D]
        v_ptr,
        slot_ptr,  # [B] int64
        pos_ptr,  # [B, T] int64
        o_ptr,  # [B, T, H, D]
        T,
        L,
        sm_scale,
        stride_qb,
        stride_qt,
        stride_ks,
        stride_kl,
        stride_ob,
        stride_ot,
        G: tl.constexpr,
        D: tl.constexpr,
        R_PAD: tl.constexpr,  # G * T rounded up to a power of two (>= 16 for tl.dot)
        BLOCK_L: tl.constexpr,
    ):
        b = tl.program_id(0)
        j = tl.program_id(1)  # KV head; its query heads are j*G .. j*G+G-1
        r = tl.arange(0, R_PAD)  # query row r = g * T + t
        g = r // T
        t = r % T
        r_ok = r < G * T
        d = tl.arange(0, D)
        q = tl.load(
            q_ptr + b * stride_qb + t[:, None] * stride_qt + (j * G + g)[:, None] * D + d[None, :],
            mask=r_ok[:, None],
            other=0.0,
        )
        q = q * sm_scale
        pos = tl.load(pos_ptr + b * T + t, mask=r_ok, other=0)
        slot = tl.load(slot_ptr + b)
        kv_base = slot * stride_ks + j * D
        m_i = tl.full([R_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([R_PAD], tl.float32)
        acc = tl.zeros([R_PAD, D], tl.float32)
        for l0 in range(0, L, BLOCK_L):
            lk = l0 + tl.arange(0, BLOCK_L)
            l_ok = lk < L
            offs = kv_base + lk[:, None] * stride_kl + d[None, :]
            k = tl.load(k_ptr + offs, mask=l_ok[:, None], other=0.0)
            v = tl.load(v_ptr + offs, mask=l_ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
            visible = (lk[None, :] <= pos[:, None]) & l_ok[None, :]
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a chunk nothing sees yet
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(
            o_ptr + b * stride_ob + t[:, None] * stride_ot + (j * G + g)[:, None] * D + d[None, :],
            out,
            mask=r_ok[:, None],
        )

    return decode_attention_kernel


def launch(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, positions: Tensor, kv_len: int
) -> Tensor:
    """[B, T, H, D] attention output (no checks; see `decode_attention`)."""
    B, T, H, D = q.shape
    Hkv = k_cache.shape[2]
    G = H // Hkv
    out = torch.empty_like(q)
    slots, positions = slots.contiguous(), positions.contiguous()  # read as [B] and [B, T]
    r_pad = max(16, 1 << max(G * T - 1, 0).bit_length())
    _kernel()[(B, Hkv)](
        q, k_cache, v_cache, slots, positions, out, T, kv_len, D**-0.5,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        out.stride(0), out.stride(1),
        G=G, D=D, R_PAD=r_pad, BLOCK_L=BLOCK_L, num_warps=4,
    )  # fmt: skip
    return out


@torch.library.custom_op("refserver_cuda::decode_attention", mutates_args=())
def _decode_attention_op(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, positions: Tensor, kv_len: int
) -> Tensor:
    return launch(q, k_cache, v_cache, slots, positions, kv_len)


@_decode_attention_op.register_fake
def _(q, k_cache, v_cache, slots, positions, kv_len):
    return torch.empty_like(q)


def fits(q: Tensor, k_cache: Tensor) -> bool:
    """Whether the kernel takes this call: float32 CUDA, at most MAX_QUERIES tokens a row,
    contiguous q and cache, head_dim a power of two."""
    D = q.shape[-1]
    return (
        q.is_cuda
        and q.dtype == torch.float32
        and k_cache.dtype == torch.float32
        and q.shape[1] <= MAX_QUERIES
        and q.is_contiguous()
        and k_cache.is_contiguous()
        and D & (D - 1) == 0
        and q.shape[2] % k_cache.shape[2] == 0
    )


def decode_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, positions: Tensor, kv_len: int
) -> Tensor:
    """softmax(q k^T / sqrt(D)) v per row over cache positions [0, kv_len) of the row's slot,
    each query seeing the positions <= its own: q [B, T, H, D] (T <= MAX_QUERIES), caches
    [S, Lmax, Hkv, D], slots [B] and positions [B, T] int64 on q's device -> [B, T, H, D]."""
    if not fits(q, k_cache) or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"decode_attention: needs float32 CUDA q [B, T<={MAX_QUERIES}, H, D] and caches "
            f"[S, L, Hkv, D] (contiguous, D a power of two, H a multiple of Hkv), got q "
            f"{q.dtype} {tuple(q.shape)} on {q.device}, k {tuple(k_cache.shape)}, "
            f"v {tuple(v_cache.shape)}"
        )
    if not 0 < kv_len <= k_cache.shape[1]:
        raise ValueError(f"decode_attention: kv_len={kv_len} outside (0, {k_cache.shape[1]}]")
    return torch.ops.refserver_cuda.decode_attention(q, k_cache, v_cache, slots, positions, kv_len)
