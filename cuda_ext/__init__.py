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

from cuda_ext.checks import DTYPES, check_no_overlap, check_structure, check_values

__all__ = ["build_detail", "check_values", "hybrid_mtp_ngram", "is_available"]

_fake_registered = False


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
        tensors = dict(zip(DTYPES, (token_ids_all, prompt_lens, pre_ids, step_idx,
                                     draft_token_num, draft_tokens, seq_lens_this_time,
                                     seq_lens_decoder, max_dec_len), strict=True))  # fmt: skip
        check_structure(tensors, {
            "max_ngram_size": max_ngram_size, "min_ngram_size": min_ngram_size,
            "max_draft_tokens": max_draft_tokens, "threshold": threshold, "pad_to_max": pad_to_max,
        })  # fmt: skip
        return None

    _fake_registered = True


def build_detail(device_type: str = "cpu") -> str:
    """Why the op is or is not available for ``device_type`` (the compiler's error on failure)."""
    build = _builder()
    result = build.ensure_cuda() if device_type == "cuda" else build.ensure_cpu()
    return result.detail


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
    tensors = {
        "token_ids_all": token_ids_all, "prompt_lens": prompt_lens, "pre_ids": pre_ids,
        "step_idx": step_idx, "draft_token_num": draft_token_num, "draft_tokens": draft_tokens,
        "seq_lens_this_time": seq_lens_this_time, "seq_lens_decoder": seq_lens_decoder,
        "max_dec_len": max_dec_len,
    }  # fmt: skip
    scalars = {
        "max_ngram_size": max_ngram_size, "min_ngram_size": min_ngram_size,
        "max_draft_tokens": max_draft_tokens, "threshold": threshold, "pad_to_max": pad_to_max,
    }  # fmt: skip
    check_structure(tensors, scalars)
    check_no_overlap(tensors)  # pointers and strides only: no sync on CUDA
    _require(token_ids_all.device)
    if token_ids_all.device.type == "cpu":  # on CUDA this would sync: see check_values
        check_values(token_ids_all, prompt_lens, pre_ids, step_idx, seq_lens_this_time,
                     draft_tokens)  # fmt: skip
    torch.ops.specgate.hybrid_mtp_ngram(
        token_ids_all, prompt_lens, pre_ids, step_idx, draft_token_num, draft_tokens,
        seq_lens_this_time, seq_lens_decoder, max_dec_len, max_ngram_size, min_ngram_size,
        max_draft_tokens, threshold, pad_to_max,
    )  # fmt: skip


# SPECGATE_REQUIRE_OP=cpu|cuda: a failed or missing build is an error at import, not a fallback.
if _builder().required_op() is not None:
    is_available(_builder().required_op())
