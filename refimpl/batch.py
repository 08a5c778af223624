"""One set of arguments for hybrid_mtp_ngram, with the helpers every test needs around it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

TENSOR_FIELDS = (
    "token_ids_all",
    "prompt_lens",
    "pre_ids",
    "step_idx",
    "draft_token_num",
    "draft_tokens",
    "seq_lens_this_time",
    "seq_lens_decoder",
    "max_dec_len",
)
OUTPUT_FIELDS = ("draft_tokens", "seq_lens_this_time")

HybridImpl = Callable[..., None]


@dataclass
class Batch:
    """The op's arguments, in its order, plus where the batch came from."""

    token_ids_all: torch.Tensor
    prompt_lens: torch.Tensor
    pre_ids: torch.Tensor
    step_idx: torch.Tensor
    draft_token_num: torch.Tensor
    draft_tokens: torch.Tensor
    seq_lens_this_time: torch.Tensor
    seq_lens_decoder: torch.Tensor
    max_dec_len: torch.Tensor
    max_ngram_size: int
    min_ngram_size: int
    max_draft_tokens: int
    threshold: int = 1024
    pad_to_max: bool = False
    recipe: str = ""
    seed: int | None = None

    @property
    def batch_size(self) -> int:
        return self.token_ids_all.shape[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in TENSOR_FIELDS}

    def clone(self) -> Batch:
        return dataclasses.replace(self, **{k: v.clone() for k, v in self.tensors().items()})

    def to(self, device: str | torch.device) -> Batch:
        return dataclasses.replace(self, **{k: v.to(device) for k, v in self.tensors().items()})

    def run(self, impl: HybridImpl) -> None:
        """Call ``impl`` with this batch's arguments (it mutates the outputs in place)."""
        impl(
            *self.tensors().values(),
            self.max_ngram_size,
            self.min_ngram_size,
            self.max_draft_tokens,
            threshold=self.threshold,
            pad_to_max=self.pad_to_max,
        )

    def scalars(self) -> dict[str, int | bool]:
        return {
            "max_ngram_size": self.max_ngram_size,
            "min_ngram_size": self.min_ngram_size,
            "max_draft_tokens": self.max_draft_tokens,
            "threshold": self.threshold,
            "pad_to_max": self.pad_to_max,
        }

    def row_summary(self, b: int, max_tokens: int = 48) -> str:
        """A one-row description short enough for a failure message."""

        def clip(values: list[int]) -> str:
            if len(values) <= max_tokens:
                return str(values)
            half = max_tokens // 2
            return f"{values[:half]} ... ({len(values) - max_tokens} more) ... {values[-half:]}"

        plen = int(self.prompt_lens.reshape(-1)[b])
        step = int(self.step_idx.reshape(-1)[b])
        ori = int(self.seq_lens_this_time[b])
        return (
            f"row {b}: seq_lens_this_time={ori} seq_lens_decoder={int(self.seq_lens_decoder[b])} "
            f"step_idx={step} prompt_lens={plen} max_dec_len={int(self.max_dec_len.reshape(-1)[b])}\n"
            f"    prompt={clip(self.token_ids_all[b, : max(plen, 0)].tolist())}\n"
            f"    pre_ids[:step_idx+1]={clip(self.pre_ids[b, : max(step + 1, 0)].tolist())}\n"
            f"    draft_tokens={self.draft_tokens[b].tolist()}"
        )


def make_batch(
    prompts: list[list[int]],
    generated: list[list[int]],
    drafts: list[list[int]],
    seq_lens_decoder: list[int],
    max_dec_len: list[int],
    *,
    max_ngram_size: int,
    min_ngram_size: int,
    max_draft_tokens: int,
    threshold: int = 1024,
    pad_to_max: bool = False,
    prompt_capacity: int | None = None,
    generated_capacity: int | None = None,
    draft_width: int | None = None,
    fill: int = -7,
    column_shapes: bool = False,
    recipe: str = "",
    seed: int | None = None,
) -> Batch:
    """Build a Batch from per-row lists.

    ``generated[b]`` is ``pre_ids[b, :step_idx[b] + 1]`` (so ``step_idx = len - 1``); an empty
    list gives step_idx 0 with a ``fill`` token. ``drafts[b]`` is the row's current draft, so
    ``seq_lens_this_time[b] = len(drafts[b])``. Unused tail cells hold ``fill``.
    ``column_shapes`` gives prompt_lens/step_idx/max_dec_len the [B, 1] shape engines use.
    """
    batch = len(prompts)
    prompt_capacity = prompt_capacity or max([len(p) for p in prompts] + [1])
    generated_capacity = generated_capacity or max([len(g) for g in generated] + [1])
    draft_width = draft_width or max_draft_tokens + 1
    token_ids_all = torch.full((batch, prompt_capacity), fill, dtype=torch.int64)
    pre_ids = torch.full((batch, generated_capacity), fill, dtype=torch.int64)
    draft_tokens = torch.full((batch, draft_width), fill, dtype=torch.int64)
    for b in range(batch):
        token_ids_all[b, : len(prompts[b])] = torch.tensor(prompts[b], dtype=torch.int64)
        pre_ids[b, : len(generated[b])] = torch.tensor(generated[b], dtype=torch.int64)
        draft_tokens[b, : len(drafts[b])] = torch.tensor(drafts[b], dtype=torch.int64)

    def column(values: list[int], dtype: torch.dtype) -> torch.Tensor:
        t = torch.tensor(values, dtype=dtype)
        return t.unsqueeze(1) if column_shapes else t

    lens = [len(d) for d in drafts]
    return Batch(
        token_ids_all=token_ids_all,
        prompt_lens=column([len(p) for p in prompts], torch.int64),
        pre_ids=pre_ids,
        step_idx=column([max(len(g) - 1, 0) for g in generated], torch.int64),
        draft_token_num=torch.tensor(lens, dtype=torch.int32),
        draft_tokens=draft_tokens,
        seq_lens_this_time=torch.tensor(lens, dtype=torch.int32),
        seq_lens_decoder=torch.tensor(seq_lens_decoder, dtype=torch.int32),
        max_dec_len=column(max_dec_len, torch.int64),
        max_ngram_size=max_ngram_size,
        min_ngram_size=min_ngram_size,
        max_draft_tokens=max_draft_tokens,
        threshold=threshold,
        pad_to_max=pad_to_max,
        recipe=recipe,
        seed=seed,
    )
