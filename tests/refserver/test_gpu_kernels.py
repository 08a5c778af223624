"""refserver's float32 CUDA kernels (`refserver.gpu_linear`, `refserver.gpu_attention`): the
same function as float64 references, a row's linear result independent of the other rows, and
the same outputs under CUDA-graph replay. The argument checks run everywhere; the rest needs
CUDA and Triton (skipped with the reason otherwise)."""

from __future__ import annotations

import pytest
import torch

from refserver import gpu_attention, gpu_linear

needs_kernels = pytest.mark.skipif(
    gpu_linear.unavailable_reason() is not None,
    reason=f"refserver's CUDA kernels: {gpu_linear.unavailable_reason()}",
)


def test_rows_linear_cuda_refuses_bad_arguments():
    with pytest.raises(TypeError, match="x must be float32 on CUDA"):
        gpu_linear.rows_linear_cuda(torch.zeros(1, 32), torch.zeros(8, 32))


def test_decode_attention_refuses_bad_arguments():
    q = torch.zeros(1, 1, 9, 64)
    cache = torch.zeros(2, 16, 3, 64)
    slots, pos = torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="needs float32 CUDA q"):
        gpu_attention.decode_attention(q, cache, cache, slots, pos, 1)


@needs_kernels
@pytest.mark.parametrize("n,k", [(960, 576), (576, 1536), (8192, 576), (37, 100)])
def test_rows_linear_matches_float64_and_is_row_invariant(n, k):
    g = torch.Generator(device="cuda").manual_seed(n + k)
    w = torch.randn(n, k, device="cuda", generator=g) * 0.05
    x = torch.randn(8, k, device="cuda", generator=g)
    alone = [gpu_linear.rows_linear_cuda(x[i : i + 1], w) for i in range(8)]
    for m in range(1, 9):
        y = gpu_linear.rows_linear_cuda(x[:m], w)
        ref = x[:m].double() @ w.double().T
        assert float((y.double() - ref).norm() / ref.norm()) < 1e-6
        for i in range(m):  # bit for bit the row computed alone
            assert torch.equal(y[i], alone[i][0]), (m, i)


def _attention_ref(q, k_cache, v_cache, slots, positions, kv_len):
    H, D = q.shape[2:]
    G = H // k_cache.shape[2]
    k = k_cache[slots, :kv_len].double().repeat_interleave(G, dim=2)
    v = v_cache[slots, :kv_len].double().repeat_interleave(G, dim=2)
    s = torch.einsum("bthd,blhd->bhtl", q.double(), k) / D**0.5
    visible = torch.arange(kv_len, device=q.device)[None, None, :] <= positions[:, :, None]
    s = s.masked_fill(~visible[:, None], float("-inf"))
    return torch.einsum("bhtl,blhd->bthd", s.softmax(-1), v)


@needs_kernels
@pytest.mark.parametrize("B,T,start,kv_len", [(1, 1, 150, 256), (3, 6, 90, 256), (2, 6, 3, 9)])
def test_decode_attention_matches_float64(B, T, start, kv_len):
    g = torch.Generator(device="cuda").manual_seed(B * 100 + T)
    k_cache = torch.randn(4, 300, 3, 64, device="cuda", generator=g)
    v_cache = torch.randn(4, 300, 3, 64, device="cuda", generator=g)
    q = torch.randn(B, T, 9, 64, device="cuda", generator=g)
    slots = torch.tensor([3, 0, 2][:B], device="cuda")  # any slots, in any order
    positions = torch.arange(T, device="cuda") + start + 7 * torch.arange(B, device="cuda")[:, None]
    positions = positions.clamp(max=kv_len - 1)
    out = gpu_attention.decode_attention(q, k_cache, v_cache, slots, positions, kv_len)
    ref = _attention_ref(q, k_cache, v_cache, slots, positions, kv_len)
    assert float((out.double() - ref).abs().max()) < 1e-5


@needs_kernels
def test_kernels_replay_in_a_cuda_graph():
    g = torch.Generator(device="cuda").manual_seed(7)
    w = torch.randn(576, 576, device="cuda", generator=g)
    x = torch.randn(6, 576, device="cuda", generator=g)
    cache = torch.randn(2, 64, 3, 64, device="cuda", generator=g)
    q = torch.randn(1, 6, 9, 64, device="cuda", generator=g)
    slots = torch.tensor([1], device="cuda")
    pos = torch.arange(30, 36, device="cuda")[None]

    def run():
        return (
            gpu_linear.rows_linear_cuda(x, w),
            gpu_attention.decode_attention(q, cache, cache, slots, pos, 40),
        )

    eager = run()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = run()
    x.copy_(torch.randn(6, 576, device="cuda", generator=g))  # new inputs, replayed
    graph.replay()
    torch.cuda.synchronize()
    again = run()
    assert torch.equal(outs[0], again[0]) and torch.equal(outs[1], again[1])
    assert not torch.equal(outs[0], eager[0])


def test_kernel_switch_is_opt_in_and_checked(monkeypatch):
    from refserver.model import cuda_f32_kernels

    monkeypatch.delenv("REFSERVER_CUDA_KERNELS", raising=False)
    assert cuda_f32_kernels.__wrapped__() is False  # off by default (or no CUDA here)
    monkeypatch.setenv("REFSERVER_CUDA_KERNELS", "yes")
    with pytest.raises(ValueError, match="REFSERVER_CUDA_KERNELS='yes'"):
        cuda_f32_kernels.__wrapped__()


def test_kernels_compile_for_hopper_without_a_gpu():
    """Triton's front end and ptxas for sm_90 need no GPU: a kernel that does not compile fails
    here, not in a device call (the first one did, at `m < M` with M specialized to 1)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    ints = dict.fromkeys(["M", "N", "K", "stride_xm", "stride_wn", "stride_ym"], "i32")
    sig = {"x_ptr": "*fp32", "w_ptr": "*fp32", "y_ptr": "*fp32", **ints}
    sig |= dict.fromkeys(["M_PAD", "BLOCK_N", "BLOCK_K"], "constexpr")
    for m_pad, k in [(1, 576), (8, 576), (8, 1536)]:
        block_n, block_k = gpu_linear.blocks(k)
        consts = {"M_PAD": m_pad, "BLOCK_N": block_n, "BLOCK_K": block_k}
        triton.compile(ASTSource(gpu_linear._kernel(), sig, consts), target=target)
    # As Triton specializes an int argument equal to 1 (the kernel also says not to).
    consts |= {"M": 1, "M_PAD": 1}
    triton.compile(ASTSource(gpu_linear._kernel(), sig | {"M": "constexpr"}, consts), target=target)
    names = ["T", "L", "stride_qb", "stride_qt", "stride_ks", "stride_kl", "stride_ob", "stride_ot"]
    sig = {f"{n}_ptr": "*fp32" for n in ("q", "k", "v")} | {"slot_ptr": "*i64", "pos_ptr": "*i64"}
    sig |= {"o_ptr": "*fp32", **dict.fromkeys(names[:2], "i32"), "sm_scale": "fp32"}
    sig |= dict.fromkeys(names[2:], "i32") | dict.fromkeys(
        ["G", "D", "R_PAD", "BLOCK_L"], "constexpr"
    )
    for r_pad in (16, 32):
        consts = {"G": 3, "D": 64, "R_PAD": r_pad, "BLOCK_L": gpu_attention.BLOCK_L}
        triton.compile(ASTSource(gpu_attention._kernel(), sig, consts), target=target)
    consts |= {"T": 1, "L": 1}
    sig |= {"T": "constexpr", "L": "constexpr"}
    triton.compile(ASTSource(gpu_attention._kernel(), sig, consts), target=target)
