"""The straightforward CUDA design of hybrid_mtp_ngram: the peer column of benchmarks.op_sweep.

Two launches, as engines ship it (issue 15): one 1024-thread block per row searching for the
first window (atomicMin in shared memory), then one 1024-thread block applying the threshold
with a block-wide prefix sum, so B <= 1024. Source: straightforward.cu (kernels) and
straightforward.cpp (binding), built on first use with torch.utils.cpp_extension into
``$SPECGATE_BUILD_DIR/straightforward`` (or ~/.cache/specgate/straightforward).

It is exact on valid inputs (op_sweep checks it against the oracle at every point before timing
it), does no host sync and is graph-capturable; it is a benchmark peer, not a safe op: it does
not check values.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MAX_BATCH = 1024
_module = None
_workspaces: dict[tuple[int, int], torch.Tensor] = {}


def _build():
    global _module
    if _module is None:
        from torch.utils import cpp_extension

        root = os.environ.get("SPECGATE_BUILD_DIR") or str(Path.home() / ".cache" / "specgate")
        build = Path(root) / "straightforward"
        build.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        _module = cpp_extension.load(
            name="specgate_straightforward",
            sources=[str(HERE / "straightforward.cpp"), str(HERE / "straightforward.cu")],
            extra_cuda_cflags=["-O3"],
            build_directory=str(build),
        )
    return _module


def hybrid_mtp_ngram(token_ids_all, prompt_lens, pre_ids, step_idx, draft_token_num,
                     draft_tokens, seq_lens_this_time, seq_lens_decoder, max_dec_len,
                     max_ngram_size, min_ngram_size, max_draft_tokens, threshold=1024,
                     pad_to_max=False) -> None:  # fmt: skip
    """The oracle's signature, in place; CUDA tensors, B <= 1024."""
    batch = token_ids_all.shape[0]
    if batch > MAX_BATCH:
        # one block of MAX_BATCH threads applies the threshold
        raise ValueError(f"token_ids_all: B={batch}, the design takes B <= {MAX_BATCH}")
    if not token_ids_all.is_cuda:
        raise ValueError(f"token_ids_all: the straightforward design runs on CUDA, got "
                         f"{token_ids_all.device}")  # fmt: skip
    if batch == 0:
        return
    tensors = (token_ids_all, prompt_lens, pre_ids, step_idx, draft_tokens, seq_lens_this_time,
               seq_lens_decoder, max_dec_len)  # fmt: skip
    for t in tensors:
        if not t.is_contiguous():
            raise ValueError("the straightforward design takes contiguous tensors")
    key = (token_ids_all.device.index or 0, batch)
    if key not in _workspaces:  # once per (device, B): no allocation on later (captured) calls
        _workspaces[key] = torch.empty(batch, dtype=torch.int64, device=token_ids_all.device)
    stream = torch.cuda.current_stream(token_ids_all.device).cuda_stream
    _build().launch(
        token_ids_all, prompt_lens, pre_ids, step_idx, draft_tokens,
        seq_lens_this_time.view(-1), seq_lens_decoder.view(-1), max_dec_len, _workspaces[key],
        max_ngram_size, min_ngram_size, max_draft_tokens, int(threshold), bool(pad_to_max), stream,
    )  # fmt: skip
