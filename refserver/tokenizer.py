"""Tokenizer and chat template rebuilt from GGUF metadata, so the server needs no Hub download.

The GGUF stores a GPT-2 style byte-level BPE (`tokenizer.ggml.model == "gpt2"`) as a token list
plus merges, and the chat template as a Jinja string. `tokenizers` rebuilds the BPE exactly;
the pre-tokenizer for `tokenizer.ggml.pre == "smollm"` splits digits one by one before the
GPT-2 byte-level regex, as llama.cpp and the Hugging Face tokenizer.json of SmolLM2 do.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any

import jinja2
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

_TOKEN_TYPE_CONTROL = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL: special tokens such as <|im_end|>


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


class Tokenizer:
    """Byte-level BPE + chat template. `encode` never adds BOS (SmolLM2 uses none)."""

    def __init__(
        self,
        tokens: Sequence[str],
        merges: Sequence[str],
        token_types: Sequence[int],
        chat_template: str,
        bos_id: int,
        eos_id: int,
        pre: str = "smollm",
    ) -> None:
        vocab = {tok: i for i, tok in enumerate(tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False)
        self._tok = HFTokenizer(bpe)
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre == "smollm":
            self._tok.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level]
            )
        else:
            self._tok.pre_tokenizer = byte_level
        self._tok.decoder = decoders.ByteLevel()
        special = [tokens[i] for i, t in enumerate(token_types) if t == _TOKEN_TYPE_CONTROL]
        self._tok.add_special_tokens(
            [AddedToken(s, special=True, normalized=False) for s in special]
        )
        self.special_ids = frozenset(vocab[s] for s in special)
        self._pieces = list(tokens)
        # The longest text one token can stand for: a prompt of n bytes has >= n / this tokens.
        self.max_token_bytes = max(len(self.token_bytes(i)) for i in range(len(tokens)))
        self.vocab_size = len(tokens)
        self.bos_id = bos_id
        self.eos_id = eos_id
        # <|endoftext|> also ends a sequence: the base model emits it after plain completions.
        self.stop_ids = frozenset({eos_id, vocab.get("<|endoftext|>", eos_id)})
        env = jinja2.Environment(
            trim_blocks=False, lstrip_blocks=False, undefined=jinja2.StrictUndefined
        )
        self._template = env.from_string(chat_template)
        self.chat_template = chat_template

    @classmethod
    def from_gguf(cls, reader: Any) -> Tokenizer:
        """Build from a `gguf.GGUFReader`."""
        fields = reader.fields

        def get(key: str) -> Any:
            if key not in fields:
                raise KeyError(f"GGUF metadata has no {key!r}")
            return fields[key].contents()

        model = get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(
                f"tokenizer.ggml.model={model!r}: only 'gpt2' byte-level BPE is supported"
            )
        pre = get("tokenizer.ggml.pre") if "tokenizer.ggml.pre" in fields else "default"
        return cls(
            tokens=get("tokenizer.ggml.tokens"),
            merges=get("tokenizer.ggml.merges"),
            token_types=get("tokenizer.ggml.token_type"),
            chat_template=get("tokenizer.chat_template"),
            bos_id=int(get("tokenizer.ggml.bos_token_id")),
            eos_id=int(get("tokenizer.ggml.eos_token_id")),
            pre=pre,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings inside it map to their ids.

        Through `encode_batch`, which releases the GIL while it works (`encode` holds it): the
        server tokenizes in a worker thread, and a long prompt must not stall the event loop."""
        return self._tok.encode_batch([text], add_special_tokens=False)[0].ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token (a byte-level token can be part of a UTF-8 character)."""
        piece = self._pieces[token_id]
        if token_id in self.special_ids:
            return piece.encode("utf-8")
        return bytes(_UNICODE_TO_BYTE[c] for c in piece)

    def token_str(self, token_id: int) -> str:
        """Text of one token, as OpenAI's logprobs `token` field shows it."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        return self._template.render(
            messages=list(messages), add_generation_prompt=add_generation_prompt
        )


class IncrementalDecoder:
    """The text of a growing token sequence, one token at a time, in O(1) per token.

    Equal to `Tokenizer.decode` of the whole sequence (special tokens skipped, invalid UTF-8
    replaced by U+FFFD) without re-decoding the whole output at every engine step. A character
    whose UTF-8 bytes span several tokens comes out with the token that completes it; `flush`
    ends the sequence (a dangling partial character becomes U+FFFD, as in a full decode).
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        if token_id in self._tokenizer.special_ids:
            return ""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
