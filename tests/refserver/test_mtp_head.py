"""MTP head: shapes, errors, KV-cache behaviour, save/load, and the committed weights.

Cache tests use a tiny random target (seeded) so that they run in well under a second; the
committed weights are loaded against the real SmolLM2 GGUF.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refserver.model import ModelConfig, Transformer
from refserver.mtp_head import MTPHead

SEED = 1234
ASSETS = Path(__file__).resolve().parents[2] / "refserver" / "assets"
TINY = ModelConfig(
    vocab_size=97, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, ffn_dim=64, max_seq_len=256
)


@pytest.fixture
def tiny() -> tuple[Transformer, MTPHead]:
    print(f"seed={SEED}")
    torch.manual_seed(SEED)
    target = Transformer(TINY).eval().requires_grad_(False)
    for p in target.parameters():
        p.data.normal_(0.0, 0.3)
    head = MTPHead.from_target(target, seed=SEED)
    for p in head.parameters():  # move away from the copied-from-target init
        p.data.add_(torch.randn_like(p) * 0.1)
    return target, head.eval()


def _hidden(target: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    B, T = tokens.shape
    cache = target.new_cache(B, T)
    return target(tokens, torch.arange(T)[None].expand(B, T), cache, torch.arange(B))


def test_shapes_and_dtypes(tiny):
    target, head = tiny
    B, T = 3, 7
    tokens = torch.randint(0, TINY.vocab_size, (B, T + 1))
    hidden = _hidden(target, tokens[:, :T])
    cache = head.new_cache(4, 32)
    slots = torch.tensor([2, 0, 3])
    out, logits = head(hidden, tokens[:, 1:], torch.arange(T)[None].expand(B, T), cache, slots)
    assert out.shape == (B, T, TINY.dim)
    assert logits.shape == (B, T, TINY.vocab_size) and logits.dtype == torch.float32
    drafts, dl = head.draft(
        hidden[:, -1],
        tokens[:, -1],
        torch.full((B,), T - 1),
        cache,
        slots,
        steps=4,
        return_logits=True,
    )
    assert drafts.shape == (B, 4) and drafts.dtype == torch.long
    assert dl.shape == (B, 4, TINY.vocab_size)
    assert torch.equal(drafts, dl.argmax(-1))
    assert 6 * 1000 < sum(p.numel() for p in head.parameters()) < 100 * 1000  # tiny head only


def test_bad_arguments_are_named(tiny):
    _target, head = tiny
    cache = head.new_cache(2, 8)
    h = torch.zeros(2, TINY.dim)
    tok = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="steps=0"):
        head.draft(h, tok, torch.zeros(2, dtype=torch.long), cache, torch.arange(2), steps=0)
    with pytest.raises(ValueError, match="max_len 8"):
        head.draft(h, tok, torch.full((2,), 6), cache, torch.arange(2), steps=3)
    with pytest.raises(ValueError, match="next_tokens"):
        head.fill(
            h[:, None], tok[:, None], torch.zeros(2, 2, dtype=torch.long), cache, torch.arange(2)
        )


def test_cached_draft_equals_recompute_without_cache(tiny):
    """Drafts from the incremental cache == a cache-free recomputation of the same chain."""
    target, head = tiny
    B, T, steps = 3, 24, 3
    tokens = torch.randint(0, TINY.vocab_size, (B, T))
    hidden = _hidden(target, tokens)
    pos = torch.arange(T)[None].expand(B, T)
    slots = torch.arange(B)
    for t in (0, 5, 17):
        cache = head.new_cache(B, T + steps)
        if t > 0:
            head.fill(hidden[:, :t], tokens[:, 1 : t + 1], pos[:, :t], cache, slots)
        drafts, logits = head.draft(
            hidden[:, t], tokens[:, t + 1], pos[:, t], cache, slots, steps, return_logits=True
        )
        chained = tokens.clone()
        chained[:, t + 2 : t + 1 + steps] = drafts[:, : steps - 1]  # the head's own tokens
        outs = head.chained_forward(
            hidden, chained, pos, torch.zeros(B, T, dtype=torch.long), steps
        )
        for k in range(steps):
            ref = head.logits(outs[k][:, t])
            torch.testing.assert_close(logits[:, k], ref, atol=1e-4, rtol=1e-4)
            assert torch.equal(drafts[:, k], ref.argmax(-1))


def test_draft_vocab_restricts_the_argmax(tiny):
    """With a draft vocabulary, each draft is the argmax over those tokens only: the full
    logits masked outside the set, chained on its own (restricted) tokens."""
    target, head = tiny
    B, T, steps = 3, 12, 3
    tokens = torch.randint(0, TINY.vocab_size, (B, T))
    hidden = _hidden(target, tokens)
    pos = torch.arange(T)[None].expand(B, T)
    slots = torch.arange(B)
    vocab = torch.randperm(TINY.vocab_size, generator=torch.Generator().manual_seed(SEED))[:20]
    args = (hidden[:, -1], tokens[:, -1], pos[:, -1])
    head.set_draft_vocab(vocab)
    assert head.draft_vocab_size == 20
    drafts, logits = head.draft(*args, head.new_cache(B, T + steps), slots, steps, True)
    assert torch.isin(drafts, vocab).all()
    outside = torch.ones(TINY.vocab_size, dtype=torch.bool)
    outside[vocab] = False
    assert torch.isinf(logits[..., outside]).all()
    head.set_draft_vocab(None)
    assert head.draft_vocab_size == TINY.vocab_size
    # Recompute the same chain with the full head: step k fed the restricted drafts.
    cache = head.new_cache(B, T + steps)
    h, tok, p = args[0][:, None], args[1][:, None], args[2][:, None]
    for k in range(steps):
        h, full = head(h, tok, p, cache, slots)
        torch.testing.assert_close(logits[:, k][:, vocab], full[:, 0][:, vocab])
        masked = full[:, 0].masked_fill(outside, -torch.inf)
        assert torch.equal(drafts[:, k], masked.argmax(-1))
        tok, p = drafts[:, k : k + 1], p + 1
    with pytest.raises(ValueError, match="draft vocab"):
        head.set_draft_vocab(torch.tensor([0, TINY.vocab_size]))


def test_stale_speculative_entries_are_overwritten(tiny):
    """The engine's sync protocol: draft, accept some tokens, fill them, draft again. The result
    must equal drafting from a cache that never held speculative entries."""
    target, head = tiny
    B, T, steps = 2, 30, 4
    tokens = torch.randint(0, TINY.vocab_size, (B, T))
    hidden = _hidden(target, tokens)
    pos = torch.arange(T)[None].expand(B, T)
    slots = torch.tensor([1, 0])

    used = head.new_cache(2, T + steps)
    head.fill(hidden[:, :9], tokens[:, 1:10], pos[:, :9], used, slots)
    head.draft(hidden[:, 9], tokens[:, 10], pos[:, 9], used, slots, steps)  # writes 9..12
    # "Verification accepted" positions up to 11: refresh 10, then draft from 11.
    head.fill(hidden[:, 10:11], tokens[:, 11:12], pos[:, 10:11], used, slots)
    got = head.draft(hidden[:, 11], tokens[:, 12], pos[:, 11], used, slots, steps)

    fresh = head.new_cache(2, T + steps)
    head.fill(hidden[:, :11], tokens[:, 1:12], pos[:, :11], fresh, slots)
    want = head.draft(hidden[:, 11], tokens[:, 12], pos[:, 11], fresh, slots, steps)
    assert torch.equal(got, want)


def test_rows_with_own_slots_and_positions_are_independent(tiny):
    target, head = tiny
    T, steps = 20, 3
    tokens = torch.randint(0, TINY.vocab_size, (2, T))
    hidden = _hidden(target, tokens)
    pos = torch.arange(T)[None].expand(2, T)
    at = torch.tensor([6, 13])
    batched = head.new_cache(5, T + steps)
    slots = torch.tensor([4, 2])
    for r in range(2):
        n = int(at[r])
        head.fill(
            hidden[r : r + 1, :n],
            tokens[r : r + 1, 1 : n + 1],
            pos[r : r + 1, :n],
            batched,
            slots[r : r + 1],
        )
    rows = torch.arange(2)
    got = head.draft(hidden[rows, at], tokens[rows, at + 1], at, batched, slots, steps)
    for r in range(2):
        n = int(at[r])
        alone = head.new_cache(1, T + steps)
        s0 = torch.zeros(1, dtype=torch.long)
        head.fill(
            hidden[r : r + 1, :n], tokens[r : r + 1, 1 : n + 1], pos[r : r + 1, :n], alone, s0
        )
        want = head.draft(
            hidden[r : r + 1, n], tokens[r : r + 1, n + 1], at[r : r + 1], alone, s0, steps
        )
        assert torch.equal(got[r], want[0])


def test_save_load_roundtrip(tiny, tmp_path):
    target, head = tiny
    path = tmp_path / "head.safetensors"
    head.save(path, dtype=torch.float32)
    loaded = MTPHead.load(path, target)
    for (n, a), (_, b) in zip(head.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    other = Transformer(
        ModelConfig(
            vocab_size=97, dim=24, n_layers=1, n_heads=3, n_kv_heads=1, ffn_dim=32, max_seq_len=64
        )
    )
    with pytest.raises(ValueError, match="dim=48"):
        MTPHead.load(path, other)
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        MTPHead.load(tmp_path / "missing.safetensors", target)


@pytest.fixture(scope="module")
def smollm():
    from refserver.model import default_gguf_path, load_model

    try:
        path = default_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(f"SmolLM2 GGUF not installed: {e}")
    return load_model(path, dtype=torch.float32)


def test_committed_weights_load(smollm):
    target, _ = smollm
    path = ASSETS / "mtp_head.safetensors"
    assert path.stat().st_size <= 25 * 1024 * 1024
    head = MTPHead.load(path, target)
    assert head.proj.weight.dtype == torch.float32
    assert all(torch.isfinite(p).all() for p in head.parameters())


@pytest.mark.slow
def test_committed_weights_draft_the_targets_tokens(smollm):
    """On one held-out prompt, the trained head's first draft matches the target's greedy token
    far more often than chance (an untrained head scores ~0)."""
    from mtp_train.evaluate import acceptance
    from mtp_train.generate import GenConfig, generate

    target, tok = smollm
    head = MTPHead.load(ASSETS / "mtp_head.safetensors", target)
    line = (ASSETS / "prompts" / "heldout.jsonl").read_text().splitlines()[0]
    ids = tok.encode(tok.apply_chat_template(json.loads(line)["messages"]))
    samples = generate(target, [ids], set(tok.stop_ids), GenConfig(max_new_tokens=48))
    acc = acceptance(head, samples, steps=2)
    print(acc.as_dict())
    assert acc.accept_rate[0] > 0.3


def test_training_pipeline_reduces_loss_on_tiny_target(tiny):
    """generate -> pack -> train -> acceptance, end to end on the tiny target: the head learns
    (held-out KL falls) and its cached drafts agree with the chained training forward."""
    from dataclasses import replace

    from mtp_train.evaluate import acceptance
    from mtp_train.generate import GenConfig, generate
    from mtp_train.train_head import TrainConfig, evaluate_loss, pack, train

    target, _ = tiny
    head = MTPHead.from_target(target, seed=SEED).placed_like(target, torch.float32)
    gen = torch.Generator().manual_seed(SEED)
    prompts = [
        torch.randint(0, TINY.vocab_size, (int(n),), generator=gen).tolist()
        for n in torch.randint(4, 12, (40,), generator=gen)
    ]
    samples = generate(target, prompts, {0}, GenConfig(batch_size=16, max_new_tokens=24))
    assert len(samples) == 40
    assert all(s.hidden.shape == (len(s.tokens) - 1, TINY.dim) for s in samples)
    cfg = TrainConfig(
        rows_per_batch=4,
        row_len=64,
        warmup_steps=5,
        time_budget_s=600,
        max_steps=60,
        val_every=1000,
        log_every=1000,
        lr=3e-3,
        seed=SEED,
    )
    train_data = pack(samples[:32], cfg.row_len, torch.device("cpu"))
    val_data = pack(samples[32:], cfg.row_len, torch.device("cpu"))
    before, _ = evaluate_loss(head, target, val_data, cfg)
    hist = train(head, target, train_data, val_data, cfg)
    after, agree = hist.val[-1]["kl"], hist.val[-1]["agree"]
    print(f"val KL before {before}, after {after}, agree {agree}")
    assert hist.steps == 60
    assert after[0] < 0.8 * before[0] and after[1] < 0.8 * before[1]
    # Greedy answers: cached draft-1 acceptance == teacher-forced step-1 argmax agreement.
    acc = acceptance(head, samples[32:], steps=2)
    forced, forced_agree = evaluate_loss(head, target, val_data, replace(cfg, rows_per_batch=64))
    assert forced == pytest.approx(after, rel=1e-5)  # token-weighted, batch-size independent
    assert abs(acc.accept_rate[0] - forced_agree[0]) < 0.05, (acc, forced_agree)


def test_drafter_batch_lays_out_rows_by_slot(tiny):
    """`MTPDrafter.batch` (one gather for every row's hidden states): each row lands in the row
    of its slot, a shorter row repeats its last pair up to `width`, a slot without a row gets
    zeros at positions 0.., and the ints are what the head's fill reads."""
    from refserver.mtp import MTPDrafter, MTPInput

    _, head = tiny
    torch.manual_seed(SEED)
    drafter = MTPDrafter(head, max_slots=4, max_len=64)
    d = TINY.dim
    rows = [
        MTPInput(slot=2, hidden=torch.randn(3, d), next_tokens=[5, 6, 7], start=10),
        MTPInput(slot=0, hidden=torch.randn(1, d), next_tokens=[9], start=4),
    ]
    hidden, tokens, positions, last, slots = drafter.batch(rows, [0, 1, 2, 3], width=4)
    assert hidden.shape == (4, 4, d) and tokens.shape == positions.shape == (4, 4)
    assert torch.equal(hidden[2], rows[0].hidden[[0, 1, 2, 2]])
    assert torch.equal(hidden[0], rows[1].hidden[[0, 0, 0, 0]])
    assert torch.equal(hidden[1], torch.zeros(4, d)) and torch.equal(hidden[3], torch.zeros(4, d))
    assert tokens.tolist() == [[9, 9, 9, 9], [0, 0, 0, 0], [5, 6, 7, 7], [0, 0, 0, 0]]
    assert positions.tolist() == [[4, 4, 4, 4], [0, 1, 2, 3], [10, 11, 12, 12], [0, 1, 2, 3]]
    assert last.tolist() == [0, 0, 2, 0] and slots.tolist() == [0, 1, 2, 3]
    assert tokens.dtype == positions.dtype == last.dtype == slots.dtype == torch.int64
