"""The compact SmolLM2 model: config from GGUF, tokenizer, per-row positions, KV rollback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refserver import rows_linear
from refserver.model import (
    Linear,
    ModelConfig,
    bf16_packed_everywhere,
    default_gguf_path,
    f32_packed_min_rows,
    onednn_bf16_packing,
)


def test_config_from_gguf():
    cfg = ModelConfig.from_gguf(default_gguf_path())
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads) == (30, 576, 9, 3)
    assert (cfg.ffn_dim, cfg.vocab_size, cfg.head_dim) == (1536, 49152, 64)
    assert cfg.rope_base == 100000.0


def test_tokenizer_roundtrip_and_bytes(model_and_tokenizer):
    _, tok = model_and_tokenizer
    text = "Digits 12345, héllo wörld 🙂 and code: def f(x):\n    return x"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert b"".join(tok.token_bytes(i) for i in ids).decode("utf-8") == text
    # SmolLM2's pre-tokenizer splits digits one by one.
    assert [tok.decode([i]) for i in tok.encode("2024")] == ["2", "0", "2", "4"]


def test_chat_template_from_gguf(model_and_tokenizer):
    _, tok = model_and_tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok.encode(text)
    assert ids[0] == 1 and ids.count(tok.eos_id) == 2  # <|im_start|>, two <|im_end|> specials


def _solo_logits(model, ids, slot=0):
    cache = model.new_cache(1, len(ids) + 4)
    pos = torch.arange(len(ids))[None]
    return model.logits(model(torch.tensor([ids]), pos, cache, torch.tensor([0])))[0]


@torch.inference_mode()
def test_batched_rows_at_their_own_positions(model_and_tokenizer):
    """Two rows at different positions, one padded, in one call equal each row run alone."""
    model, tok = model_and_tokenizer
    a = tok.encode("The quick brown fox jumps over the lazy dog because")
    b = tok.encode("def add(a, b):\n    return")
    ref_a, ref_b = _solo_logits(model, a), _solo_logits(model, b)

    cache = model.new_cache(4, 64)
    slots = torch.tensor([3, 1])
    # Prefill all but the last 3 tokens of a and the last 1 of b, one row at a time.
    model(torch.tensor([a[:-3]]), torch.arange(len(a) - 3)[None], cache, slots[:1])
    model(torch.tensor([b[:-1]]), torch.arange(len(b) - 1)[None], cache, slots[1:])
    tokens = torch.tensor([a[-3:], [b[-1], 0, 0]])  # row b padded with 2 junk tokens
    positions = torch.stack(
        [torch.arange(len(a) - 3, len(a)), torch.arange(len(b) - 1, len(b) + 2)]
    )
    logits = model.logits(model(tokens, positions, cache, slots))
    torch.testing.assert_close(logits[0], ref_a[-3:], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1, 0], ref_b[-1], atol=2e-4, rtol=1e-4)


@torch.inference_mode()
def test_rollback_is_overwriting(model_and_tokenizer):
    """Rejected draft positions hold stale K/V; the next forward overwrites them."""
    model, tok = model_and_tokenizer
    ids = tok.encode("Once upon a time, in a small village by the sea, there lived")
    ref = _solo_logits(model, ids)
    n = len(ids) - 2
    cache = model.new_cache(1, 64)
    slot = torch.tensor([0])
    model(torch.tensor([ids[:n]]), torch.arange(n)[None], cache, slot)
    # A wrong 4-token draft written at positions n..n+3, then "rejected".
    junk = torch.tensor([[ids[n], 11, 22, 33]])
    model(junk, torch.arange(n, n + 4)[None], cache, slot)
    # Resume from position n+1 with the true token: the junk at n+1.. must not be seen.
    out = model.logits(model(torch.tensor([ids[n + 1 :]]), torch.tensor([[n + 1]]), cache, slot))
    torch.testing.assert_close(out[0, -1], ref[-1], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 6, 16, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frozen_linear_equals_f_linear(rows, dtype):
    """The CPU fast paths: bf16 (torch.mv, oneDNN-packed weight) gives F.linear's exact bits;
    float32 up to `rows_linear.MAX_ROWS` rows takes refserver's rows kernel where it runs, above
    (or without it) from `f32_packed_min_rows()` rows the packed weight; both equal F.linear to
    float32 rounding.

    Runs the path this CPU has: the bf16 packed one where torch says oneDNN can pack bf16
    (AVX-512 or AVX-NE-CONVERT), else F.linear; the packed check is skipped, with the reason,
    elsewhere.
    """
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(1536, 576, generator=gen).to(dtype)
    x = torch.randn(1, rows, 576, generator=gen).to(dtype)
    f32 = dtype is torch.float32
    for pack in (True, False):
        frozen = Linear.frozen(weight, pack=pack)
        min_rows = f32_packed_min_rows()
        expect_packed = (f32 and min_rows is not None) or (
            not f32 and (pack or bf16_packed_everywhere()) and onednn_bf16_packing()
        )
        assert frozen.bf16_mv == (not f32 and not bf16_packed_everywhere())
        assert (frozen.packed is not None) == expect_packed
        assert frozen.rows_kernel == (f32 and rows_linear.unavailable_reason() is None)
        got, want = frozen(x), F.linear(x, weight)
        if frozen.rows_kernel and rows <= rows_linear.MAX_ROWS:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
            assert torch.equal(got, rows_linear.rows_linear(x, weight))
        elif f32 and expect_packed and rows >= min_rows:
            # another summation order: not the same bits, the same values to rounding
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
            assert torch.equal(
                got, torch.ops.mkldnn._linear_pointwise(x, frozen.packed, None, "none", [], "")
            )
        else:
            assert torch.equal(got, want), f"rows={rows} {dtype} pack={pack}"
    if not f32 and rows > 1 and not onednn_bf16_packing():
        pytest.skip(
            "oneDNN cannot pack bf16 weights on this CPU "
            f"({torch.backends.cpu.get_cpu_capability()}): checked F.linear only"
        )
