"""IncrementalDecoder: token-by-token text equals a full decode, also for split UTF-8."""

from __future__ import annotations

import random

import pytest

from refserver.tokenizer import IncrementalDecoder

SEED = 20261127


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gguf")
    import gguf

    from refserver.model import default_gguf_path
    from refserver.tokenizer import Tokenizer

    return Tokenizer.from_gguf(gguf.GGUFReader(str(default_gguf_path())))


def _utf8_alone(tok, i: int) -> bool:
    try:
        tok.token_bytes(i).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_incremental_decode_equals_full_decode(tokenizer):
    """Random sequences drawn heavily from byte-fragment tokens (part of a multi-byte
    character), multi-byte tokens and special tokens: every prefix's text matches."""
    tok = tokenizer
    print(f"seed={SEED}")
    rng = random.Random(SEED)
    regular = [i for i in range(tok.vocab_size) if i not in tok.special_ids]
    fragments = [i for i in regular if not _utf8_alone(tok, i)]
    multibyte = [i for i in regular if i not in fragments and max(tok.token_bytes(i)) >= 0x80]
    assert len(fragments) > 100 and len(multibyte) > 100  # the vocabulary has both kinds
    pools = [fragments, multibyte, sorted(tok.special_ids), regular]
    for _ in range(400):
        ids = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 24))]
        dec = IncrementalDecoder(tok)
        text = ""
        for n, t in enumerate(ids, 1):
            text += dec.add(t)
            full = tok.decode(ids[:n])
            # Before the end only a partial character may be missing, never wrong text.
            assert full.startswith(text) and len(full) - len(text) <= 1, ids[:n]
        assert text + dec.flush() == tok.decode(ids), ids


def test_character_split_over_tokens_comes_with_its_last_byte(tokenizer):
    tok = tokenizer
    ids = tok.encode("naïve café 你好 🙂")
    dec = IncrementalDecoder(tok)
    pieces = [dec.add(t) for t in ids]
    assert "".join(pieces) + dec.flush() == "naïve café 你好 🙂"
    assert "\ufffd" not in "".join(pieces)
