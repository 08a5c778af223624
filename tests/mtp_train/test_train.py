"""MTP training pipeline pieces (mtp_train): token-id data shards, hidden-state
recomputation, the token-rank asset, truncated evaluation samples and the prompt families'
held-out exclusion. A tiny random target (seeded) keeps everything well under a second each;
the committed token-rank asset is checked as a file.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mtp_train import prompts as P
from mtp_train.data import load_samples, save_samples
from mtp_train.generate import GenConfig, Sample, generate, recompute_hidden
from mtp_train.token_rank import (
    FORMAT,
    answer_counts,
    coverage,
    load_rank,
    rank_from_counts,
    save_rank,
)
from refserver.heldout import heldout_user_texts
from refserver.model import ModelConfig, Transformer

SEED = 4321
ASSETS = Path(__file__).resolve().parents[2] / "refserver" / "assets"
TINY = ModelConfig(
    vocab_size=97, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, ffn_dim=64, max_seq_len=256
)


@pytest.fixture
def tiny_target() -> Transformer:
    print(f"seed={SEED}")
    torch.manual_seed(SEED)
    target = Transformer(TINY).eval().requires_grad_(False)
    for p in target.parameters():
        p.data.normal_(0.0, 0.3)
    return target


def _random_samples(n: int, seed: int) -> list[Sample]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(3, 40, (1,), generator=gen))
        tokens = torch.randint(0, 49152, (length,), generator=gen)
        prompt_len = int(torch.randint(1, length, (1,), generator=gen))
        out.append(Sample(tokens, None, prompt_len, i % 3 != 0, i, source=i % 2))
    return out


def test_token_data_roundtrip_over_several_shards(tmp_path):
    print(f"seed={SEED}")
    samples = _random_samples(50, SEED)
    paths = save_samples(samples, tmp_path, max_shard_tokens=300)
    assert len(paths) > 2  # the shard limit was exercised
    back = load_samples(tmp_path)
    assert len(back) == len(samples)
    for a, b in zip(samples, back, strict=True):
        assert torch.equal(a.tokens, b.tokens)
        assert (a.prompt_len, a.greedy, a.source) == (b.prompt_len, b.greedy, b.source)
        assert b.hidden is None


def test_token_data_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data-"):
        load_samples(tmp_path)
    big = Sample(torch.tensor([1, 70000]), None, 1, True)
    with pytest.raises(ValueError, match="70000"):
        save_samples([big], tmp_path / "x")


def test_recomputed_hidden_states_match_generation(tiny_target):
    """Training from stored token ids sees the hidden states generation produced (up to
    float32 rounding between the decode-step and prefill attention paths)."""
    gen = torch.Generator().manual_seed(SEED)
    prompts = [
        torch.randint(0, TINY.vocab_size, (int(n),), generator=gen).tolist()
        for n in torch.randint(3, 15, (12,), generator=gen)
    ]
    generated = generate(tiny_target, prompts, {0}, GenConfig(batch_size=5, max_new_tokens=20))
    stripped = [Sample(s.tokens, None, s.prompt_len, s.greedy, s.index) for s in generated]
    again = recompute_hidden(tiny_target, stripped, max_batch_tokens=64, max_rows=3)
    worst = 0.0
    for a, b in zip(generated, again, strict=True):
        assert b.hidden is not None and b.hidden.shape == a.hidden.shape
        assert torch.equal(a.tokens, b.tokens) and a.prompt_len == b.prompt_len
        worst = max(worst, float((a.hidden - b.hidden).abs().max() / a.hidden.abs().max()))
    print(f"max relative difference {worst:.2e}")
    assert worst < 1e-4


def test_generator_hidden_states_equal_the_model_forward(tiny_target):
    """The generator's left-padded batched decoding (prefill, then static decode steps) gives
    the hidden states `Transformer.forward` gives each sequence alone, at its true positions:
    the training data is the engine's model, not a look-alike."""
    gen = torch.Generator().manual_seed(SEED)
    prompts = [
        torch.randint(0, TINY.vocab_size, (int(n),), generator=gen).tolist()
        for n in torch.randint(2, 12, (5,), generator=gen)
    ]
    samples = generate(tiny_target, prompts, set(), GenConfig(batch_size=5, max_new_tokens=9))
    worst = 0.0
    for s in samples:
        n = len(s.tokens)
        cache = tiny_target.new_cache(1, n)
        ref = tiny_target(s.tokens[None, :-1], torch.arange(n - 1)[None], cache, torch.tensor([0]))
        assert s.hidden is not None and s.hidden.shape == ref[0].shape
        # Greedy rows: each generated token is the model's own argmax after its prefix.
        assert torch.equal(
            tiny_target.logits(ref[0, s.prompt_len - 1 :]).argmax(-1), s.tokens[s.prompt_len :]
        )
        worst = max(worst, float((s.hidden - ref[0]).abs().max() / ref.abs().max()))
    print(f"max relative difference {worst:.2e}")
    assert worst < 1e-5


def test_truncated_sample_keeps_prompt_and_cuts_answer():
    s = Sample(torch.arange(20), torch.zeros(19, 4), 8, True, 3, 1)
    cut = s.truncated(5)
    assert torch.equal(cut.tokens, torch.arange(13)) and cut.hidden.shape == (12, 4)
    assert (cut.prompt_len, cut.greedy, cut.index, cut.source) == (8, True, 3, 1)
    assert torch.equal(s.truncated(100).tokens, s.tokens)


def test_token_rank_counts_answers_only_and_orders_ties_by_id(tmp_path):
    samples = [
        Sample(torch.tensor([5, 5, 5, 1, 2, 2]), None, 3, True),  # answer: 1, 2, 2
        Sample(torch.tensor([9, 3, 1, 3]), None, 1, True),  # answer: 3, 1, 3
    ]
    counts = answer_counts(samples, vocab_size=10)
    assert counts.tolist() == [0, 2, 2, 2, 0, 0, 0, 0, 0, 0]  # prompt ids 5, 9 not counted
    rank = rank_from_counts(counts)
    assert rank.tolist() == [1, 2, 3, 0, 4, 5, 6, 7, 8, 9]
    assert coverage(rank, counts, ks=(1, 3)) == {1: pytest.approx(1 / 3), 3: 1.0}
    path = tmp_path / "rank.safetensors"
    save_rank(path, counts)
    r, c, meta = load_rank(path)
    assert r.dtype == np.int32 and c.dtype == np.int64
    assert r.tolist() == rank.tolist() and c.tolist() == counts.tolist()
    assert meta == {"format": FORMAT, "answer_tokens": "6", "vocab_size": "10"}
    with pytest.raises(ValueError, match="vocab_size=3"):
        answer_counts(samples, vocab_size=3)


def test_committed_token_rank_asset():
    rank, count, meta = load_rank(ASSETS / "target_token_rank.safetensors")
    assert rank.shape == count.shape == (49152,)
    assert sorted(rank.tolist()) == list(range(49152))  # a permutation of all ids
    ordered = count[rank]
    assert (np.diff(ordered) <= 0).all()  # descending counts
    ties = (ordered[1:] == ordered[:-1]).nonzero()[0]
    assert (rank[ties + 1] > rank[ties]).all()  # ties by ascending id
    assert int(meta["answer_tokens"]) == int(count.sum()) > 1_000_000


@pytest.mark.parametrize(
    "family",
    ["code_edit", "sentence", "bullet", "message", "product", "table", "open"],
)
def test_prompt_families_share_no_8_words_with_heldout(family):
    """The new templates are this project's own wording: before any exclusion, no generated
    prompt shares an 8-word sequence with a held-out prompt, and no open-ended one touches a
    held-out topic."""
    rng = random.Random(SEED)
    tiny_funcs = [
        "def f(a, b):\n    total = a + b\n    if total > 3:\n        return a\n    return b"
    ]
    make = {
        "code_edit": lambda: P.code_edit_prompts(rng, tiny_funcs, 300),
        "sentence": lambda: P.sentence_prompts(rng, 200),
        "bullet": lambda: P.bullet_prompts(rng, 200),
        "message": lambda: P.message_prompts(rng, 200),
        "product": lambda: P.product_prompts(rng, 200),
        "table": lambda: P.table_prompts(rng, 300),
        "open": lambda: P.open_prompts_more(rng, 600),
    }[family]
    prompts = list(make())
    assert len(prompts) >= 200
    kept, dropped = P.exclude_heldout([(family, p) for p in prompts], heldout_user_texts())
    assert dropped == 0 and len(kept) == len(prompts)
    if family == "open":
        touching = [p for p in prompts if P.touches_heldout_topic(p)]
        # The fixed lists are filtered by build_prompts; templates over TOPICS must never touch.
        assert len(touching) <= 2, touching


def test_heldout_topic_words_are_whole_words():
    assert P.touches_heldout_topic("Why do Cats purr?")
    assert not P.touches_heldout_topic("Explain concatenation in Python.")  # "cat" inside a word


def test_derived_prompts_use_lists_code_and_paragraphs():
    para = "This paragraph was written by the target model itself. " * 4
    answers = [
        ("open", "Tips:\n\n- Drink water daily.\n- Eat greens.\n- Go outside.\n\n" + para),
        (
            "code",
            "```javascript\nfunction add(a, b) {\n  // adds the two numbers and returns their sum\n"
            "  return a + b;\n}\n```",
        ),
    ]
    derived = P.derived_prompts(answers, seed=SEED)
    texts = [d["messages"][0]["content"] for d in derived]
    assert len(texts) == 3  # list -> prose and one paragraph edit (two per answer), JS -> Python
    assert texts[0].endswith("- Drink water daily.\n- Eat greens.\n- Go outside.")
    assert para.strip()[:40] in texts[1]
    assert texts[2].startswith("Translate this JavaScript code into Python:")
    assert [d["kind"] for d in derived] == ["derived-text", "derived-text", "derived-code"]


def test_training_prompts_are_reproducible_from_committed_data():
    """The prompts come from mtp_train/data alone (no stdlib files of the running Python): the
    build gives, byte for byte, the file the committed head was trained on (MTP_CARD.md)."""
    import hashlib
    import json

    text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in P.build_prompts(seed=0))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert digest == "c1f6e398ac2330c5782ef1434b679d7c3d1de74815a83839212c0f1af71aaf12", digest


def test_snippet_extraction_roundtrip(tmp_path):
    """`--snippets-from` rebuilds the data file from a stdlib folder: a tiny one here."""
    pkg = tmp_path / "lib"
    pkg.mkdir()
    doc = "A paragraph about nothing in particular, " * 6
    (pkg / "mod.py").write_text(
        f'"""{doc}"""\n\n\ndef f(a, b):\n    c = a + b\n    d = c * 2\n    return d\n'
    )
    (pkg / "test").mkdir()
    (pkg / "test" / "skipped.py").write_text("def g(x):\n    y = x\n    z = y\n    return z\n")
    snippets = P.extract_snippets(pkg)
    assert snippets.functions == ["def f(a, b):\n    c = a + b\n    d = c * 2\n    return d"]
    assert snippets.docstrings == [" ".join(doc.split())]
    P.save_snippets(snippets, tmp_path / "s.json.gz")
    assert P.stdlib_snippets(tmp_path / "s.json.gz") == snippets
