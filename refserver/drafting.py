"""Draft extension by n-gram lookup through `hybrid_mtp_ngram` (SPEC §1), the op or the oracle.

The request state the op reads lives on the op's device for the whole request (see
`NgramExtender`): nothing is rebuilt from Python lists per step. The op runs once per step over
the whole slot batch, and each row's full draft comes back in one copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from refserver.model import host_ints_to

log = logging.getLogger(__name__)

HybridFn = Callable[..., None]
DEFAULT_THRESHOLD = 1024  # the op's threshold (SPEC §1.3), which the engine never changes


def resolve_impl(ngram_impl: str, device: torch.device) -> tuple[str, HybridFn]:
    """("op" | "oracle", callable). `auto` is the kernel suite's default (refimpl.impls): the op
    when it is built for `device`, else the oracle with a warning, an error under
    SPECGATE_REQUIRE_OP."""
    import refimpl
    from refimpl import impls

    if ngram_impl == "oracle":
        return "oracle", refimpl.hybrid_mtp_ngram
    impl = impls.default(device.type)
    if impl.name == impls.OP:
        return "op", impl.fn
    if ngram_impl == "op":
        raise RuntimeError(f"--ngram-impl op requested but the op is unusable: {impl.how}")
    return "oracle", impl.fn


@dataclass
class DraftRow:
    slot: int
    last_token: int  # the last emitted token: draft_tokens[slot, 0]
    num_generated: int  # emitted tokens so far (the last one included)
    kv_len: int  # tokens in the target's KV cache; > 0 for every active row
    num_mtp: int | None = None  # MTP drafts of this row (adaptive); None: all of the step's


class NgramExtender:
    """The op's per-slot request state, resident on the op's device and updated in place.

    Every argument of `hybrid_mtp_ngram` is a [max_slots, ...] tensor allocated once (the
    FastDeploy layout: the whole slot batch, rows not drafting this step have
    seq_lens_this_time = 0 and are never read). A request's prompt is copied into
    `token_ids_all` once, at admission; each step's accepted tokens are appended to `pre_ids`
    with one scatter (`record`), the MTP drafts are written there on the device, and one
    device-to-host copy reads the step's drafts back.
    """

    def __init__(
        self,
        impl: str,
        fn: HybridFn,
        K: int,
        max_ngram_size: int,
        min_ngram_size: int,
        device: torch.device,
        max_slots: int,
        max_len: int,
        pad_to_max: bool = False,
    ) -> None:
        self.impl, self.fn, self.K = impl, fn, K
        if impl == "op" and device.type == "cpu":
            # The public wrapper checks every argument in Python before the op (so that no C++
            # exception is thrown where that crashes: cuda_ext/NOTES.md, "GPU toolchain note").
            # Here the tensors are this object's own and the C++ CPU op checks the same things
            # itself: the wrapper's checks would cost ~0.1 ms a call against the op's ~4 us,
            # and adaptive rows call it twice a step.
            self.fn = _cpu_op
        self.max_ngram_size, self.min_ngram_size = max_ngram_size, min_ngram_size
        self.pad_to_max = pad_to_max  # SPEC §1.4: every drafting row leaves with K+1 tokens
        # The oracle works on CPU tensors; the op gets tensors on the model's device.
        self.device = dev = device if impl == "op" else torch.device("cpu")
        S = max_slots
        i64 = dict(dtype=torch.int64, device=dev)
        i32 = dict(dtype=torch.int32, device=dev)
        self.token_ids_all = torch.full((S, max_len), -1, **i64)
        self.prompt_lens = torch.zeros(S, **i64)
        self.pre_ids = torch.full((S, max_len + K + 1), -1, **i64)
        self.step_idx = torch.zeros(S, **i64)
        self.draft_token_num = torch.full((S,), K, **i32)
        self.draft_tokens = torch.full((S, K + 1), -1, **i64)
        self.seq_lens_this_time = torch.zeros(S, **i32)
        self.seq_lens_decoder = torch.zeros(S, **i32)
        self.max_dec_len = torch.zeros(S, **i64)
        self._pending: list[tuple[int, int, Sequence[int]]] = []  # (slot, start, tokens)

    def admit(self, slot: int, prompt: Sequence[int], max_tokens: int) -> None:
        """A new request in `slot`: its prompt, once (the step's one copy of a whole row)."""
        self.token_ids_all[slot, : len(prompt)] = host_ints_to(list(prompt), self.device)
        self.prompt_lens[slot] = len(prompt)
        self.max_dec_len[slot] = max_tokens
        self._pending = [p for p in self._pending if p[0] != slot]

    def record(self, slot: int, start: int, tokens: Sequence[int]) -> None:
        """Emitted tokens `start ..` of the request in `slot`; written with the next `extend`."""
        if tokens:
            self._pending.append((slot, start, tokens))

    def write_pending(self) -> None:
        """All recorded tokens into `pre_ids` with one host-to-device copy and one scatter."""
        if not self._pending:
            return
        rows, cols, values = [], [], []
        for slot, start, tokens in self._pending:
            rows += [slot] * len(tokens)
            cols += range(start, start + len(tokens))
            values += tokens
        index = host_ints_to(rows + cols + values, self.device).view(3, -1)
        self.pre_ids[index[0], index[1]] = index[2]
        self._pending = []

    def row_state(
        self, rows: Sequence[DraftRow], num_mtp_drafts: int, active: Sequence[bool] | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The per-row facts `run` takes, on the op's device in one copy: slots, last tokens,
        step_idx, KV lengths and whether each row drafts (a CUDA graph's padding rows do not)."""
        num_mtp = [num_mtp_drafts if r.num_mtp is None else r.num_mtp for r in rows]
        table = [
            *(r.slot for r in rows),
            *(r.last_token for r in rows),
            *(r.num_generated + n - 1 for r, n in zip(rows, num_mtp, strict=True)),  # step_idx
            *(r.kv_len for r in rows),
            *([1] * len(rows) if active is None else [int(a) for a in active]),
            *num_mtp,
        ]
        return tuple(host_ints_to(table, self.device).view(6, len(rows)))

    def run(
        self,
        slots: torch.Tensor,
        last: torch.Tensor,
        step_idx: torch.Tensor,
        kv_len: torch.Tensor,
        active: torch.Tensor,
        num_mtp: torch.Tensor,
        mtp_drafts: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Device work only (a CUDA graph can capture it): lay the rows' MTP drafts
        ([len(slots), s] or None) into the state, run the op over the whole slot batch, and
        return the rows' (draft_tokens, seq_lens_this_time). Idempotent: every in/out argument
        is rewritten from the inputs first."""
        s = 0 if mtp_drafts is None else mtp_drafts.shape[1]
        self.seq_lens_this_time.zero_()
        self.seq_lens_decoder.zero_()
        self.seq_lens_this_time[slots] = (active * (1 + num_mtp)).int()
        self.seq_lens_decoder[slots] = (active * kv_len).int()
        self.step_idx[slots] = step_idx
        self.draft_tokens[slots, 0] = last
        if s:
            drafts = mtp_drafts.to(self.device, torch.int64)
            self.draft_tokens[slots, 1 : 1 + s] = drafts
            # pre_ids holds the verified tokens then the MTP drafts (SPEC §1.2).
            # A row with fewer MTP drafts than s (adaptive) writes the rest past its step_idx,
            # where the op does not read and the next accepted tokens overwrite.
            cols = (step_idx - num_mtp + 1)[:, None] + torch.arange(s, device=self.device)
            self.pre_ids[slots[:, None].expand(-1, s), cols] = drafts
        self.fn(
            self.token_ids_all,
            self.prompt_lens,
            self.pre_ids,
            self.step_idx,
            self.draft_token_num,
            self.draft_tokens,
            self.seq_lens_this_time,
            self.seq_lens_decoder,
            self.max_dec_len,
            self.max_ngram_size,
            self.min_ngram_size,
            self.K,
            pad_to_max=self.pad_to_max,
        )
        return self.draft_tokens[slots], self.seq_lens_this_time[slots]

    def extend(self, rows: Sequence[DraftRow], mtp_drafts: torch.Tensor | None) -> list[list[int]]:
        """Full drafts per row: the MTP drafts (`mtp_drafts` [len(rows), s] on any device, or
        None) followed by the n-gram tokens the op appends."""
        self.write_pending()
        s = 0 if mtp_drafts is None else mtp_drafts.shape[1]
        drafts, lengths = self.run(*self.row_state(rows, s), mtp_drafts)
        return read_drafts(drafts, lengths)


def _cpu_op(*args: object, pad_to_max: bool) -> None:
    """The op itself on CPU tensors, called as the wrapper is (its threshold: the default)."""
    torch.ops.specgate.hybrid_mtp_ngram(*args, DEFAULT_THRESHOLD, pad_to_max)


def read_drafts(draft_tokens: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Each row's draft (draft_tokens[b, 1:lengths[b]]) in the step's one device-to-host copy."""
    table = torch.cat([draft_tokens, lengths[:, None].to(draft_tokens.dtype)], 1).tolist()
    return [row[1 : row[-1]] for row in table]
