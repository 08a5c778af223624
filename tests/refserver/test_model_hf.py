"""Our SmolLM2 against Hugging Face transformers loading the same GGUF (slow: loads both)."""

from __future__ import annotations

import os

import pytest
import torch

from tests.refserver.helpers import heldout_prompts

pytestmark = pytest.mark.slow

TEXTS = [
    "The quick brown fox jumps over the lazy dog. 12345 héllo wörld 🙂",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
]


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it to load a GGUF
    from refserver.model import default_gguf_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = default_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tok


def _cases(tokenizer):
    chats = [tokenizer.apply_chat_template(p["messages"]) for p in heldout_prompts()[:2]]
    return TEXTS + chats


def test_tokenizer_matches_transformers(hf, model_and_tokenizer):
    _, ours = model_and_tokenizer
    _, theirs = hf
    for text in _cases(ours):
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text[:40]


@torch.inference_mode()
def test_logits_match_transformers(hf, model_and_tokenizer):
    model, tok = model_and_tokenizer
    hf_model, _ = hf
    worst = 0.0
    for text in _cases(tok):
        ids = tok.encode(text)
        theirs = hf_model(torch.tensor([ids])).logits[0].float()
        cache = model.new_cache(1, len(ids))
        ours = model.logits(
            model(torch.tensor([ids]), torch.arange(len(ids))[None], cache, torch.tensor([0]))
        )[0]
        diff = (ours - theirs).abs().max().item()
        top1 = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
        print(f"{len(ids):4d} tokens: top-1 agreement {top1:.4f}, max |logit diff| {diff:.3e}")
        worst = max(worst, diff)
        assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    print(f"max |logit diff| over all prompts: {worst:.3e}")
    assert worst < 1e-3
