"""The engine on the real model: lossless greedy speculation, SPEC §2 metrics after cuts,
stop strings, min_tokens, seeded sampling, continuous batching, cancellation, op == oracle."""

from __future__ import annotations

import collections
import itertools
import threading
from dataclasses import dataclass

import pytest
import torch

from refserver.config import EngineConfig, SpeculativeConfig
from refserver.engine import Engine, Request, StepOutput
from refserver.sampling import SamplingParams
from tests.refserver.helpers import HYBRID, NGRAM, SPEC_CONFIGS, heldout_prompts


@dataclass
class Result:
    text: str
    token_ids: list[int]
    outputs: list[StepOutput]

    @property
    def metrics(self) -> dict:
        return self.outputs[-1].metrics

    @property
    def finish_reason(self) -> str:
        return self.outputs[-1].finish_reason


def make_engine(model_and_tokenizer, spec: str | None = None, **kw) -> Engine:
    model, tok = model_and_tokenizer
    config = EngineConfig(speculative=SpeculativeConfig.from_json(spec), **kw)
    return Engine(config, model, tok)


def run(engine: Engine, prompts: list[list[int]], params: SamplingParams) -> list[Result]:
    outs: list[list[StepOutput]] = [[] for _ in prompts]
    reqs = [Request(p, params, outs[i].append) for i, p in enumerate(prompts)]
    engine.generate(reqs)
    return [
        Result("".join(o.text for o in out), [t for o in out for t in o.token_ids], out)
        for out in outs
    ]


def check_invariants(r: Result, K: int) -> None:
    m = r.metrics
    per_head = m["accepted_tokens_per_head"]
    assert len(per_head) == K + 1 and len(m["accept_ratio_per_head"]) == K
    assert all(a >= b for a, b in itertools.pairwise(per_head))
    assert m["accepted_tokens"] == sum(per_head) == len(r.token_ids)
    assert r.outputs[-1].completion_tokens == len(r.token_ids)
    steps = per_head[0]
    assert steps == len(r.outputs)  # one output per engine step the request took part in
    assert m["rejected_tokens"] == steps * (K + 1) - m["accepted_tokens"]
    for out in r.outputs:  # accept_num of each step = tokens it emitted
        assert 1 <= len(out.token_ids) <= K + 1


@pytest.fixture(scope="module")
def chat_prompts(model_and_tokenizer):
    _, tok = model_and_tokenizer
    picked = [p for p in heldout_prompts() if p["kind"] == "repetitive"][:2]
    picked += [p for p in heldout_prompts() if p["kind"] == "open"][:1]
    return [tok.encode(tok.apply_chat_template(p["messages"])) for p in picked]


@pytest.fixture(scope="module")
def greedy_none(model_and_tokenizer, chat_prompts):
    engine = make_engine(model_and_tokenizer)
    return run(engine, chat_prompts, SamplingParams(max_tokens=24, temperature=0.0))


@pytest.mark.parametrize(
    "spec",
    [NGRAM, HYBRID, SPEC_CONFIGS["adaptive hybrid K=16 s=1"]],
    ids=["ngram", "hybrid", "adaptive-K16"],  # K=16: refserver's maximum draft length
)
def test_greedy_speculation_is_lossless(model_and_tokenizer, chat_prompts, greedy_none, spec):
    engine = make_engine(model_and_tokenizer, spec)
    results = run(engine, chat_prompts, SamplingParams(max_tokens=24, temperature=0.0))
    for r, ref in zip(results, greedy_none, strict=True):
        assert r.token_ids == ref.token_ids
        assert r.text == ref.text
        check_invariants(r, engine.K)
    for ref in greedy_none:
        check_invariants(ref, 0)
    if spec == NGRAM:  # the repetitive prompts copy text: some draft must have been accepted
        assert any(r.metrics["accepted_tokens_per_head"][1] > 0 for r in results)


@pytest.mark.parametrize("draft_vocab", [64, 2048])
def test_restricted_mtp_draft_vocab_is_lossless(
    model_and_tokenizer, chat_prompts, greedy_none, draft_vocab, tmp_path
):
    """A draft vocabulary changes only what MTP proposes: greedy output equals `none`. The rank
    here is the tokens of `none`'s own answers first (so drafts can be accepted), then the rest."""
    from safetensors.torch import save_file

    model, _ = model_and_tokenizer
    V = model.config.vocab_size
    count = torch.zeros(V, dtype=torch.int64)
    for r in greedy_none:
        count += torch.bincount(torch.tensor(r.token_ids), minlength=V)
    rank = torch.argsort(count, descending=True, stable=True).to(torch.int32)
    path = tmp_path / "rank.safetensors"
    save_file({"rank": rank, "count": count}, str(path))
    engine = make_engine(
        model_and_tokenizer, HYBRID, mtp_draft_vocab=draft_vocab, mtp_token_rank_path=str(path)
    )
    assert engine.mtp.head.draft_vocab_size == draft_vocab
    results = run(engine, chat_prompts, SamplingParams(max_tokens=24, temperature=0.0))
    for r, ref in zip(results, greedy_none, strict=True):
        assert r.token_ids == ref.token_ids
        check_invariants(r, engine.K)


def test_bad_mtp_draft_vocab_is_named(model_and_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="mtp_draft_vocab=-1"):
        make_engine(model_and_tokenizer, HYBRID, mtp_draft_vocab=-1)
    with pytest.raises(FileNotFoundError, match="--mtp-token-rank"):
        make_engine(
            model_and_tokenizer,
            HYBRID,
            mtp_draft_vocab=8,
            mtp_token_rank_path=str(tmp_path / "missing.safetensors"),
        )


def test_max_tokens_cut_counts_only_emitted(model_and_tokenizer, chat_prompts, greedy_none):
    engine = make_engine(model_and_tokenizer, NGRAM)
    for max_tokens in (1, 7):
        [r] = run(engine, chat_prompts[:1], SamplingParams(max_tokens=max_tokens, temperature=0))
        assert r.token_ids == greedy_none[0].token_ids[:max_tokens]
        assert r.finish_reason == "length"
        assert r.metrics["accepted_tokens"] == max_tokens
        check_invariants(r, engine.K)


def test_stop_string_cuts_text_tokens_and_metrics(model_and_tokenizer, chat_prompts, greedy_none):
    ref = greedy_none[0]
    words = ref.text.split(" ")
    stop = " " + words[5]  # a word that first appears mid-answer
    cut_at = ref.text.index(stop)
    engine = make_engine(model_and_tokenizer, NGRAM)
    params = SamplingParams(max_tokens=24, temperature=0, stop=(stop,))
    [r] = run(engine, chat_prompts[:1], params)
    assert r.text == ref.text[:cut_at]
    assert r.finish_reason == "stop"
    # Tokens end with the one that completed the stop string, and metrics count just those.
    assert r.token_ids == ref.token_ids[: len(r.token_ids)]
    tok = engine.tokenizer
    assert stop in tok.decode(r.token_ids) and stop not in tok.decode(r.token_ids[:-1])
    check_invariants(r, engine.K)


def test_eos_ends_and_min_tokens_holds_it(model_and_tokenizer):
    _model, tok = model_and_tokenizer
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Say just: yes"}]))
    engine = make_engine(model_and_tokenizer, NGRAM)
    [short] = run(engine, [prompt], SamplingParams(max_tokens=40, temperature=0))
    assert short.finish_reason == "stop" and short.token_ids[-1] in tok.stop_ids
    n = len(short.token_ids)
    [held] = run(engine, [prompt], SamplingParams(max_tokens=40, min_tokens=n + 5, temperature=0))
    assert len(held.token_ids) >= n + 5
    assert not any(t in tok.stop_ids for t in held.token_ids[: n + 5])
    check_invariants(short, engine.K)
    check_invariants(held, engine.K)


def test_seeded_sampling_is_reproducible(model_and_tokenizer, chat_prompts):
    engine = make_engine(model_and_tokenizer, HYBRID)
    params = SamplingParams(max_tokens=16, temperature=0.8, top_p=0.95, seed=42)
    a = run(engine, chat_prompts[:1], params)[0]
    b = run(engine, chat_prompts[:1], params)[0]
    c = run(engine, chat_prompts[:1], SamplingParams(max_tokens=16, temperature=1.5, seed=7))[0]
    assert a.token_ids == b.token_ids and a.metrics == b.metrics
    assert c.token_ids != a.token_ids
    check_invariants(a, engine.K)


def test_continuous_batching_more_requests_than_slots(
    model_and_tokenizer, chat_prompts, greedy_none
):
    engine = make_engine(model_and_tokenizer, NGRAM, max_num_seqs=2)
    prompts = chat_prompts + chat_prompts[:1]
    results = run(engine, prompts, SamplingParams(max_tokens=24, temperature=0))
    for r, ref in zip(results, [*greedy_none, greedy_none[0]], strict=True):
        assert r.token_ids == ref.token_ids
        check_invariants(r, engine.K)


def test_cancel_frees_the_slot(model_and_tokenizer, chat_prompts):
    engine = make_engine(model_and_tokenizer, max_num_seqs=1)
    got: list[StepOutput] = []
    req = Request(chat_prompts[0], SamplingParams(max_tokens=50, temperature=0), got.append)
    engine.submit(req)
    engine.step()
    assert engine.num_running == 1 and len(got) == 1
    req.cancelled = True
    engine.step()
    assert engine.num_running == 0 and len(got) == 1 and not engine.has_work()


def test_op_and_oracle_draft_the_same(model_and_tokenizer, chat_prompts):
    cuda_ext = pytest.importorskip("cuda_ext")
    if not cuda_ext.is_available("cpu"):
        pytest.skip("the op's CPU kernel is not built")
    params = SamplingParams(max_tokens=16, temperature=0)
    by_impl = {}
    for impl in ("op", "oracle"):
        engine = make_engine(model_and_tokenizer, NGRAM, ngram_impl=impl)
        assert engine.ngram.impl == impl
        by_impl[impl] = [(r.token_ids, r.metrics) for r in run(engine, chat_prompts[:2], params)]
    assert by_impl["op"] == by_impl["oracle"]


def _hybrid_alone(model_and_tokenizer, prompts, params) -> list[Result]:
    """Each prompt alone on a fresh hybrid engine: the reference for the isolation tests."""
    return [run(make_engine(model_and_tokenizer, HYBRID), [p], params)[0] for p in prompts]


def test_a_request_that_raises_at_admission_fails_alone(model_and_tokenizer, chat_prompts):
    """Issue 10: a seed torch cannot take (2**70) once aborted every running request and left its
    own unanswered. Parameters the API would refuse are sent to the engine directly here."""
    good = SamplingParams(max_tokens=16, temperature=0)
    alone = _hybrid_alone(model_and_tokenizer, chat_prompts, good)
    engine = make_engine(model_and_tokenizer, HYBRID)
    bad = [
        SamplingParams(max_tokens=16, temperature=0.7, seed=2**70),
        SamplingParams(max_tokens=16, temperature=0.7, seed=-(2**70)),
    ]
    # good, bad, good, bad, good: the bad ones are admitted between innocent rows.
    params = [good, bad[0], good, bad[1], good]
    prompts = [chat_prompts[0], chat_prompts[1], chat_prompts[1], chat_prompts[2], chat_prompts[2]]
    outs: list[list[StepOutput]] = [[] for _ in params]
    engine.generate(
        [
            Request(p, sp, outs[i].append)
            for i, (p, sp) in enumerate(zip(prompts, params, strict=True))
        ]
    )
    for i in (1, 3):
        [only] = outs[i]
        assert only.finish_reason == "error" and "Overflow" in only.error, only
    for i, ref in zip((0, 2, 4), alone, strict=True):
        r = Result(
            "".join(o.text for o in outs[i]), [t for o in outs[i] for t in o.token_ids], outs[i]
        )
        assert r.finish_reason == "length" and r.text == ref.text
        assert r.metrics is not None
        check_invariants(r, engine.K)
    assert not engine.has_work() and engine.num_running == 0


def test_a_row_that_breaks_the_batched_forward_fails_alone(model_and_tokenizer, chat_prompts):
    """A bug that only one row triggers (here: a draft token outside the vocabulary, planted
    between steps) fails that row; the batch is retried row by row and the others go on."""
    good = SamplingParams(max_tokens=20, temperature=0)
    alone = _hybrid_alone(model_and_tokenizer, chat_prompts, good)
    engine = make_engine(model_and_tokenizer, HYBRID)
    outs: list[list[StepOutput]] = [[] for _ in chat_prompts]
    for i, p in enumerate(chat_prompts):
        engine.submit(Request(p, good, outs[i].append))
    engine.step()  # admits and prefills all three
    victim = engine._slots[1]
    assert victim is not None and victim.req.prompt_ids == chat_prompts[1]
    victim.drafts = [engine.tokenizer.vocab_size + 10]
    while engine.has_work():
        engine.step()
    assert outs[1][-1].finish_reason == "error" and "index" in outs[1][-1].error.lower()
    for i in (0, 2):
        text = "".join(o.text for o in outs[i])
        assert outs[i][-1].finish_reason == "length" and text == alone[i].text
        assert outs[i][-1].metrics is not None


def _outputs(results: list[Result]) -> list[list[tuple]]:
    """Everything a client sees, output by output (logprob values apart: see `_logprobs`)."""
    return [
        [(o.token_ids, o.text, o.finish_reason, o.metrics, o.completion_tokens) for o in r.outputs]
        for r in results
    ]


def _logprobs(results: list[Result]) -> list[tuple[list[int], list[float]]]:
    """Per output: the token ids of the chosen and top entries, and every logprob value."""
    table = []
    for r in results:
        for o in r.outputs:
            for lp in o.logprobs or ():
                table.append(
                    ([lp.token_id, *(t for t, _ in lp.top)], [lp.logprob, *(v for _, v in lp.top)])
                )
    return table


def _mixed_requests(chat_prompts, greedy_none) -> list[tuple[list[int], SamplingParams]]:
    """More requests than slots: one ended by a stop string, one by max_tokens, with logprobs."""
    stop = " " + greedy_none[0].text.split(" ")[5]
    return [
        (chat_prompts[0], SamplingParams(max_tokens=24, temperature=0, stop=(stop,))),
        (chat_prompts[1], SamplingParams(max_tokens=20, temperature=0, logprobs=True)),
        (chat_prompts[2], SamplingParams(max_tokens=12, temperature=0)),
        (chat_prompts[0], SamplingParams(max_tokens=16, temperature=0, logprobs=True)),
    ]


def _run_each(engine: Engine, requests) -> list[Result]:
    outs: list[list[StepOutput]] = [[] for _ in requests]
    engine.generate([Request(p, params, outs[i].append) for i, (p, params) in enumerate(requests)])
    return [
        Result("".join(o.text for o in out), [t for o in out for t in o.token_ids], out)
        for out in outs
    ]


@pytest.mark.parametrize("spec", [None, HYBRID], ids=["none", "hybrid"])
def test_overlap_schedule_changes_no_output(model_and_tokenizer, chat_prompts, greedy_none, spec):
    """--enable-overlap-schedule delivers a step's outputs during the next step's forward: a
    row a stop string ends runs one step in vain, which must be discarded. Every output
    (tokens, text, finish, metrics, logprobs) is the same as without it."""
    requests = _mixed_requests(chat_prompts, greedy_none)
    by_mode = {}
    for overlap in (False, True):
        engine = make_engine(
            model_and_tokenizer, spec, max_num_seqs=2, enable_overlap_schedule=overlap
        )
        results = _run_each(engine, requests)
        assert not engine.has_work() and engine.num_running == 0
        by_mode[overlap] = results
    assert _outputs(by_mode[True]) == _outputs(by_mode[False])
    assert by_mode[True][0].finish_reason == "stop"  # the stop string did end the first request
    # The slot of a row a stop string ends is free one step later under overlap, so a waiting
    # request may join a batch of another composition: its logits can differ in the last bits
    # (a batched matmul's summation order), never its tokens.
    with_overlap, without = _logprobs(by_mode[True]), _logprobs(by_mode[False])
    assert [ids for ids, _ in with_overlap] == [ids for ids, _ in without]
    for (_, a), (_, b) in zip(with_overlap, without, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


class _DirectPhase:
    """Stands in for `cuda_graphs.GraphedPhase` on CPU, where nothing can be captured (a fake:
    CUDA graphs have no CPU counterpart). It calls the phase function directly with the same
    static facts, so the engine's graph path (slot-prefix batches, K+1 tokens per row,
    pad_to_max, cache windows) runs on CPU; it records (batch, window) per call."""

    compiled = False

    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, collections.Counter()

    def __call__(self, *inputs, **static):
        self.calls[(inputs[0].shape[0], static["static_kv_len"])] += 1
        return self.fn(*inputs, **static)


def test_graph_path_cache_windows_change_no_text(model_and_tokenizer, chat_prompts):
    """The engine's graph path with its phases called directly (CPU): the cache window each step
    reads (256, 512, ...) holds every position it needs, so the texts equal the eager path's,
    for a request whose positions cross the first window mid-generation."""
    from refserver.cuda_graphs import KV_BUCKET_MIN

    long_prompt = (chat_prompts[1] * 8)[: KV_BUCKET_MIN - 12]
    requests = [
        (chat_prompts[0], SamplingParams(max_tokens=12, temperature=0)),
        (long_prompt, SamplingParams(max_tokens=20, min_tokens=20, temperature=0)),
    ]
    kw = dict(max_num_seqs=2, enable_overlap_schedule=True)
    eager = _run_each(make_engine(model_and_tokenizer, HYBRID, **kw), requests)
    engine = make_engine(model_and_tokenizer, HYBRID, **kw)
    engine._verify_graph = _DirectPhase(engine._verify_batch)
    engine._draft_graph = _DirectPhase(engine._draft_batch)
    engine.ngram.pad_to_max = True  # as under use_cudagraph (SPEC §1.4)
    graphed = _run_each(engine, requests)
    assert [r.text for r in graphed] == [r.text for r in eager]
    for phase in (engine._verify_graph, engine._draft_graph):
        windows = {window for _, window in phase.calls}
        assert {KV_BUCKET_MIN, 2 * KV_BUCKET_MIN} <= windows, phase.calls


class _CaptureRecorder:
    """Stands in for `cuda_graphs.GraphedPhase` on CPU (a fake: nothing can be captured there).
    `capture` records each bucket with its inputs' shapes and dtypes, as a capture fixes them;
    a call checks that a captured bucket gets inputs of exactly those (a replay copies into the
    captured inputs) and counts the calls of buckets never captured. Both call the phase
    function directly."""

    compiled = False

    def __init__(self, fn) -> None:
        self.fn, self.captured, self.calls = fn, {}, collections.Counter()
        self.lazy: list[tuple] = []

    @staticmethod
    def _bucket(inputs, static) -> tuple:
        return (tuple(inputs[0].shape), *sorted(static.items()))

    def capture(self, *inputs, **static):
        key = self._bucket(inputs, static)
        self.captured.setdefault(key, [(tuple(x.shape), x.dtype) for x in inputs])
        return self.fn(*inputs, **static)

    def __call__(self, *inputs, **static):
        key = self._bucket(inputs, static)
        if key not in self.captured:
            self.lazy.append(key)
        else:
            assert self.captured[key] == [(tuple(x.shape), x.dtype) for x in inputs], key
        self.calls[key] += 1
        return self.fn(*inputs, **static)


@pytest.mark.parametrize("spec", [None, HYBRID], ids=["none", "hybrid"])
def test_graph_buckets_are_captured_at_startup(model_and_tokenizer, chat_prompts, spec):
    """Under use_cudagraph the prefill of every captured prompt length and every batch bucket
    of the decode phases (first cache window) are captured when the engine starts, with inputs
    of the shapes and dtypes the steps then pass: a run whose batches shrink as requests end
    captures nothing more, and its texts (prompts padded to a captured length, rows padded to
    K+1 tokens) are the eager path's (CPU, phases called directly)."""
    from refserver.cuda_graphs import KV_BUCKET_MIN

    requests = [
        (p, SamplingParams(max_tokens=n, temperature=0))
        for p, n in zip([*chat_prompts, chat_prompts[0]], [18, 14, 10, 6], strict=True)
    ]
    kw = dict(max_num_seqs=4, max_model_len=300, enable_overlap_schedule=True)
    eager = _run_each(make_engine(model_and_tokenizer, spec, **kw), requests)
    engine = make_engine(model_and_tokenizer, spec, **kw)
    engine._verify_graph = _CaptureRecorder(engine._verify_batch)
    engine._prefill_graph = _CaptureRecorder(engine._prefill_forward)
    decode = [engine._verify_graph]
    if engine.mtp is not None:
        engine._draft_graph = _CaptureRecorder(engine._draft_batch)
        engine.ngram.pad_to_max = True  # as under use_cudagraph (SPEC §1.4)
        decode.append(engine._draft_graph)
    engine._capture_graphs()
    assert engine._prefill_lengths == [64, 128, 256, 300 + engine.K + 2]
    assert {shape for shape, _ in engine._prefill_graph.captured} == {
        (1, n) for n in engine._prefill_lengths
    }
    for phase in decode:
        assert {shape[0] for shape, _ in phase.captured} == {1, 2, 4}
        assert {window for _, window in phase.captured} == {("static_kv_len", KV_BUCKET_MIN)}
    graphed = _run_each(engine, requests)
    assert [r.text for r in graphed] == [r.text for r in eager]
    if spec is None:  # no drafts: nothing pad_to_max could change in the metrics
        assert [r.metrics for r in graphed] == [r.metrics for r in eager]
    for phase in [engine._prefill_graph, *decode]:
        assert phase.lazy == [], phase.lazy
    assert sum(engine._prefill_graph.calls.values()) == len(requests)
    for phase in decode:
        assert len({shape[0] for shape, _ in phase.calls}) >= 2, phase.calls  # buckets switched


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize(
    ("draft_graph", "opt_level", "spec"),
    [
        (False, 0, HYBRID),
        (True, 0, HYBRID),
        (True, 2, HYBRID),
        (True, 0, SPEC_CONFIGS["hybrid K=16 s=1"]),
    ],
    ids=["verify", "verify+draft", "verify+draft+compile", "verify+draft-K16"],
)
def test_cuda_graphs_change_no_text(
    model_and_tokenizer, chat_prompts, greedy_none, draft_graph, opt_level, spec
):
    """Greedy texts with the verify (and draft) phases replayed as CUDA graphs (torch.compile'd
    first at graph_opt_level 2) equal eager decoding on the same GPU, float32, with more
    requests than slots, the overlap schedule, and a request whose positions cross the first
    cache window (256) mid-generation, so its steps switch graphs. K=16 (refserver's maximum):
    17 tokens a row, past the Triton kernels' row limits (cuBLAS / SDPA then)."""
    from refserver.config import GraphOptimizationConfig
    from refserver.cuda_graphs import KV_BUCKET_MIN
    from refserver.model import load_model

    model, tok = load_model(device="cuda")
    requests = _mixed_requests(chat_prompts, greedy_none)
    long_prompt = (chat_prompts[1] * 8)[: KV_BUCKET_MIN - 12]
    requests.append((long_prompt, SamplingParams(max_tokens=24, min_tokens=20, temperature=0)))
    texts = {}
    for graphs in (False, True):
        config = EngineConfig(
            speculative=SpeculativeConfig.from_json(spec),
            device="cuda",
            max_num_seqs=2,
            enable_overlap_schedule=True,
            graph_optimization=GraphOptimizationConfig(
                use_cudagraph=graphs,
                draft_model_use_cudagraph=graphs and draft_graph,
                graph_opt_level=opt_level if graphs else 0,
            ),
        )
        results = _run_each(Engine(config, model, tok), requests)
        texts[graphs] = [(r.text, r.finish_reason) for r in results]
    assert texts[True] == texts[False]


def test_engine_on_own_thread_loads_and_steps_on_one_thread(monkeypatch, chat_prompts):
    """The server's engine (`Engine.on_own_thread`): loading and every step run on one thread
    that is not the caller's, with the caller's torch thread count (OpenMP counts are per
    thread); a request runs to completion; a construction error reaches the caller."""
    seen: dict[str, set] = {"init": set(), "step": set(), "threads": set()}
    real_init, real_step = Engine.__init__, Engine.step

    def init(self, *args, **kwargs):
        seen["init"].add(threading.get_ident())
        real_init(self, *args, **kwargs)

    def step(self):
        seen["step"].add(threading.get_ident())
        seen["threads"].add(torch.get_num_threads())
        real_step(self)

    monkeypatch.setattr(Engine, "__init__", init)
    monkeypatch.setattr(Engine, "step", step)
    caller_threads = torch.get_num_threads()
    engine = Engine.on_own_thread(EngineConfig(speculative=SpeculativeConfig.from_json(NGRAM)))
    done, outs = threading.Event(), []

    def sink(out: StepOutput) -> None:
        outs.append(out)
        if out.finish_reason is not None:
            done.set()

    engine.start()
    try:
        engine.submit(Request(chat_prompts[0], SamplingParams(max_tokens=8), sink))
        assert done.wait(120), "the engine thread did not finish the request"
    finally:
        engine.stop()
    assert sum(len(o.token_ids) for o in outs) == 8
    assert len(seen["init"]) == 1 and seen["step"] == seen["init"]
    assert threading.get_ident() not in seen["init"]
    assert seen["threads"] == {caller_threads}
    with pytest.raises(FileNotFoundError):
        Engine.on_own_thread(EngineConfig(gguf_path="/nonexistent/model.gguf"))
