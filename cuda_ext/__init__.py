"""The op ``torch.ops.specgate.hybrid_mtp_ngram`` (SPEC §1): a C++ CPU kernel and a CUDA kernel.

``hybrid_mtp_ngram(...)`` takes the oracle's exact argument list and works in place. The
libraries are built on first use (cached; see ``cuda_ext.build``). ``is_available(device)``
says whether the op can run on ``"cpu"`` or ``"cuda"`` here, so the kernel suite can pick it
as its default implementation.

On CUDA the op never synchronises with the host: it checks shapes, dtypes and devices, but
not values. Out-of-range values cannot make it read or write out of bounds (such rows are
skipped), but they are not reported; call ``check_values(...)`` first where that matters.
"""

from __future__ import annotations

import torch

__all__ = ["check_values", "hybrid_mtp_ngram", "is_available"]

_fake_registered = False
_DTYPES = {
    "token_ids_all": torch.int64, "prompt_lens": torch.int64, "pre_ids": torch.int64,
    "step_idx": torch.int64, "draft_token_num": torch.int32, "draft_tokens": torch.int64,
    "seq_lens_this_time": torch.int32, "seq_lens_decoder": torch.int32, "max_dec_len": torch.int64,
}  # fmt: skip


def _builder():
    """cuda_ext.build, imported on first use (so `python -m cuda_ext.build` imports it once)."""
    from cuda_ext import build

    return build


def _register_fake() -> None:
    """Fake (meta) kernel, so torch.compile and FakeTensor tracing see an in-place op with no output."""
    global _fake_registered
    if _fake_registered:
        return

    @torch.library.register_fake("specgate::hybrid_mtp_ngram")
    def _(token_ids_all, prompt_lens, pre_ids, step_idx, draft_token_num, draft_tokens,
          seq_lens_this_time, seq_lens_decoder, max_dec_len, max_ngram_size, min_ngram_size,
          max_draft_tokens, threshold=1024, pad_to_max=False):  # fmt: skip
        tensors = {
            "token_ids_all": token_ids_all, "prompt_lens": prompt_lens, "pre_ids": pre_ids,
            "step_idx": step_idx, "draft_token_num": draft_token_num,
            "draft_tokens": draft_tokens, "seq_lens_this_time": seq_lens_this_time,
            "seq_lens_decoder": seq_lens_decoder, "max_dec_len": max_dec_len,
        }  # fmt: skip
        for name, t in tensors.items():
            if t.dtype != _DTYPES[name]:
                raise TypeError(f"{name}: expected dtype {_DTYPES[name]}, got {t.dtype}")
            if t.device != token_ids_all.device:
                raise ValueError(
                    f"{name}: on {t.device}, but token_ids_all is on {token_ids_all.device}"
                )
        torch._check(
            draft_tokens.shape[1] >= max_draft_tokens + 1,
            lambda: "draft_tokens: narrower than max_draft_tokens + 1",
        )
        return None

    _fake_registered = True


def is_available(device_type: str = "cpu") -> bool:
    """True when the op is built and loaded for ``device_type`` ("cpu" or "cuda")."""
    if device_type == "cpu":
        ok = _builder().ensure_cpu().ok
    elif device_type == "cuda":
        ok = _builder().ensure_cuda().ok
    else:
        raise ValueError(f"device_type: expected 'cpu' or 'cuda', got {device_type!r}")
    if ok:
        _register_fake()
    return ok


def _require(device: torch.device) -> None:
    if device.type == "cuda":
        result = _builder().ensure_cuda()
        if not result.ok:
            raise RuntimeError(
                f"specgate::hybrid_mtp_ngram was asked to run on {device}, but its CUDA kernel "
                f"is not built: {result.detail}"
            )
    elif device.type != "cpu":
        raise RuntimeError(f"specgate::hybrid_mtp_ngram: no kernel for device {device}")
    result = _builder().ensure_cpu()
    if not result.ok:
        raise RuntimeError(f"specgate::hybrid_mtp_ngram is not built: {result.detail}")
    _register_fake()


def hybrid_mtp_ngram(
    token_ids_all: torch.Tensor,
    prompt_lens: torch.Tensor,
    pre_ids: torch.Tensor,
    step_idx: torch.Tensor,
    draft_token_num: torch.Tensor,
    draft_tokens: torch.Tensor,
    seq_lens_this_time: torch.Tensor,
    seq_lens_decoder: torch.Tensor,
    max_dec_len: torch.Tensor,
    max_ngram_size: int,
    min_ngram_size: int,
    max_draft_tokens: int,
    threshold: int = 1024,
    pad_to_max: bool = False,
) -> None:
    """Extend MTP drafts with n-gram tokens in place (SPEC §1.3, §1.4 with ``pad_to_max``)."""
    if not isinstance(token_ids_all, torch.Tensor):
        raise TypeError(
            f"token_ids_all: expected a torch.Tensor, got {type(token_ids_all).__name__}"
        )
    _require(token_ids_all.device)
    torch.ops.specgate.hybrid_mtp_ngram(
        token_ids_all, prompt_lens, pre_ids, step_idx, draft_token_num, draft_tokens,
        seq_lens_this_time, seq_lens_decoder, max_dec_len, max_ngram_size, min_ngram_size,
        max_draft_tokens, threshold, pad_to_max,
    )  # fmt: skip


def check_values(
    token_ids_all: torch.Tensor,
    prompt_lens: torch.Tensor,
    pre_ids: torch.Tensor,
    step_idx: torch.Tensor,
    seq_lens_this_time: torch.Tensor,
    draft_tokens: torch.Tensor,
) -> None:
    """The value checks of SPEC §1.5 for any device (copies three [B] tensors to the host).

    This synchronises, so it is a separate call and not part of the CUDA hot path. Raises
    ValueError naming the row, with the same messages as the CPU kernel.
    """
    lens = seq_lens_this_time.reshape(-1).tolist()
    plen = prompt_lens.reshape(-1).tolist()
    steps = step_idx.reshape(-1).tolist()
    width, s_all, s_pre = draft_tokens.shape[1], token_ids_all.shape[1], pre_ids.shape[1]
    for b, length in enumerate(lens):
        if not 0 <= length <= width:
            raise ValueError(
                f"seq_lens_this_time[{b}] = {length}: must be in [0, {width}] "
                "(the width of draft_tokens)"
            )
        if length == 0:
            continue
        if not 0 <= plen[b] <= s_all:
            raise ValueError(
                f"prompt_lens[{b}] = {plen[b]}: must be in [0, {s_all}] (the width of token_ids_all)"
            )
        if not 0 <= steps[b] < s_pre:
            raise ValueError(
                f"step_idx[{b}] = {steps[b]}: must be in [0, {s_pre}) (the width of pre_ids) "
                "for an active row"
            )
