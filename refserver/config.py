"""Engine configuration: FastDeploy's `--speculative-config` JSON and the serving options."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

METHODS = ("none", "ngram", "mtp")
MAX_SPECULATIVE_TOKENS = 16
# MTP drafts choose among the target's N most frequent answer tokens by default. Measured with
# benchmarks/engine_profile.py (bf16, 1 thread, 6 repetitive held-out prompts, 96 tokens):
# tokens/step of hybrid K=5 s=3 were 2.40 (full vocabulary), 2.36 (8192), 2.27 (4096), 2.18
# (2048), and its MTP draft cost 31.6 ms/step with the full 49152-row head, ~10 ms with 8192.
# 8192 tokens cover 97.8% of the 3.18M answer tokens the rank was counted on.
DEFAULT_MTP_DRAFT_VOCAB = 8192
DEFAULT_MAX_REQUEST_BYTES = 1 << 20  # the API refuses larger request bodies with 413


@dataclass(frozen=True)
class SpeculativeConfig:
    """The keys FastDeploy reads from `--speculative-config`.

    `method="mtp"` with `mtp_strategy="with_ngram"` is the hybrid: s MTP drafts, then
    `hybrid_mtp_ngram` extends them with n-gram tokens up to K = num_speculative_tokens.
    """

    method: str = "none"
    num_speculative_tokens: int = 0
    num_model_steps: int = 1
    mtp_strategy: str = "default"
    max_ngram_size: int = 3
    min_ngram_size: int = 1
    # refserver's own key (not FastDeploy's): per request, draft only as much as measurably pays
    # (refserver/adaptive.py); K stays the maximum, speculate_metrics are unchanged.
    adaptive: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"speculative-config method={self.method!r}: expected one of {METHODS}"
            )
        if self.mtp_strategy not in ("default", "with_ngram"):
            raise ValueError(
                f"speculative-config mtp_strategy={self.mtp_strategy!r}: "
                "expected 'default' or 'with_ngram'"
            )
        for name in (
            "num_speculative_tokens",
            "num_model_steps",
            "max_ngram_size",
            "min_ngram_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"speculative-config {name}={value!r}: expected an integer")
        if not isinstance(self.adaptive, bool):
            raise ValueError(
                f"speculative-config adaptive={self.adaptive!r}: expected true or false"
            )
        if self.method == "none":
            if self.adaptive:
                raise ValueError(
                    "speculative-config adaptive=true: needs method 'ngram' or 'mtp', not 'none'"
                )
            return
        K = self.num_speculative_tokens
        if not 1 <= K <= MAX_SPECULATIVE_TOKENS:
            raise ValueError(
                f"speculative-config num_speculative_tokens={K}: "
                f"expected 1..{MAX_SPECULATIVE_TOKENS} for method {self.method!r}"
            )
        if self.method == "mtp" and not 1 <= self.num_model_steps <= K:
            raise ValueError(
                f"speculative-config num_model_steps={self.num_model_steps}: "
                f"expected 1..num_speculative_tokens ({K})"
            )
        if self.uses_ngram and not 1 <= self.min_ngram_size <= self.max_ngram_size:
            raise ValueError(
                f"speculative-config min_ngram_size={self.min_ngram_size}, "
                f"max_ngram_size={self.max_ngram_size}: need 1 <= min <= max"
            )

    @property
    def K(self) -> int:
        """Draft width; 0 for no speculation (speculate_metrics then has one head)."""
        return 0 if self.method == "none" else self.num_speculative_tokens

    @property
    def mtp_steps(self) -> int:
        return self.num_model_steps if self.method == "mtp" else 0

    @property
    def uses_ngram(self) -> bool:
        return self.method == "ngram" or (
            self.method == "mtp" and self.mtp_strategy == "with_ngram"
        )

    @property
    def label(self) -> str:
        if self.method == "none":
            return "none"
        adaptive = " adaptive" if self.adaptive else ""
        if self.method == "ngram":
            return f"ngram K={self.K}{adaptive}"
        hybrid = "+ngram" if self.uses_ngram else ""
        return f"mtp{hybrid} K={self.K} s={self.num_model_steps}{adaptive}"

    @classmethod
    def from_json(cls, text: str | None) -> SpeculativeConfig:
        if not text:
            return cls()
        data = _json_flag("--speculative-config", text, set(cls.__dataclass_fields__))
        if data.get("method") == "ngram" and "num_model_steps" not in data:
            data["num_model_steps"] = 0
        if data.get("method") in (None, "none"):
            data.setdefault("num_speculative_tokens", 0)
        return cls(**data)


@dataclass(frozen=True)
class GraphOptimizationConfig:
    """The keys of FastDeploy's `--graph-optimization-config` that refserver reads.

    use_cudagraph: capture the target's verify forward (K+1 tokens per row) once per batch-size
    bucket and replay it; draft_model_use_cudagraph: the same for the MTP draft steps and the
    n-gram op after them (run with `pad_to_max=True`, SPEC §1.4); use_unique_memory_pool: every
    captured graph gets its own memory pool instead of one pool shared by all of them.
    cudagraph_capture_sizes: the batch-size buckets (default 1, 2, 4, 8, ... up to max_num_seqs).
    graph_opt_level: 0 (default) captures the phases' kernels as they are; 2 (FastDeploy's
    "static graph + compiler" level) first compiles each phase with torch.compile (inductor,
    fused Triton kernels) and captures the compiled code. 1 (a static graph without a
    compiler) has no separate meaning here and is refused.
    """

    use_cudagraph: bool = False
    draft_model_use_cudagraph: bool = False
    use_unique_memory_pool: bool = False
    cudagraph_capture_sizes: tuple[int, ...] | None = None
    graph_opt_level: int = 0

    def __post_init__(self) -> None:
        for name in ("use_cudagraph", "draft_model_use_cudagraph", "use_unique_memory_pool"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(
                    f"--graph-optimization-config {name}={value!r}: expected true/false"
                )
        sizes = self.cudagraph_capture_sizes
        if sizes is not None and (
            not sizes
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes)
        ):
            raise ValueError(
                f"--graph-optimization-config cudagraph_capture_sizes={list(sizes)!r}: "
                "expected a non-empty list of integers >= 1"
            )
        if self.graph_opt_level not in (0, 2) or isinstance(self.graph_opt_level, bool):
            raise ValueError(
                f"--graph-optimization-config graph_opt_level={self.graph_opt_level!r}: expected "
                "0 (captured as is) or 2 (torch.compile before capture)"
            )
        if self.graph_opt_level and not self.use_cudagraph:
            raise ValueError(
                "--graph-optimization-config graph_opt_level=2 needs use_cudagraph=true"
            )
        if self.draft_model_use_cudagraph and not self.use_cudagraph:
            raise ValueError(
                "--graph-optimization-config draft_model_use_cudagraph=true needs use_cudagraph=true"
            )

    @property
    def enabled(self) -> bool:
        return self.use_cudagraph

    @classmethod
    def from_json(cls, text: str | None) -> GraphOptimizationConfig:
        if not text:
            return cls()
        data = _json_flag("--graph-optimization-config", text, set(cls.__dataclass_fields__))
        sizes = data.get("cudagraph_capture_sizes")
        if isinstance(sizes, list):
            data["cudagraph_capture_sizes"] = tuple(sizes)
        elif sizes is not None:
            raise ValueError(
                f"--graph-optimization-config cudagraph_capture_sizes={sizes!r}: expected a list"
            )
        return cls(**data)


@dataclass(frozen=True)
class EngineConfig:
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    graph_optimization: GraphOptimizationConfig = field(default_factory=GraphOptimizationConfig)
    # FastDeploy's --enable-overlap-schedule: the host work of a step (detokenization, stop
    # strings, streaming, metrics) runs while the device computes the next step.
    enable_overlap_schedule: bool = False
    max_num_seqs: int = 8
    max_model_len: int = 2048
    device: str = "cpu"
    dtype: str = "float32"
    ngram_impl: str = "auto"  # auto: the op when it is built for the device, else the oracle
    seed: int = 0
    mtp_head_path: str | None = None
    # MTP drafts choose among the N most frequent target tokens (0: the full vocabulary; None:
    # DEFAULT_MTP_DRAFT_VOCAB when the token-rank file exists, else the full vocabulary).
    mtp_draft_vocab: int | None = None
    mtp_token_rank_path: str | None = None
    gguf_path: str | None = None

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs={self.max_num_seqs}: expected >= 1")
        if not 16 <= self.max_model_len <= 8192:
            raise ValueError(f"max_model_len={self.max_model_len}: expected 16..8192")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r}: expected 'float32' or 'bfloat16'")
        if self.mtp_draft_vocab is not None and (
            not isinstance(self.mtp_draft_vocab, int) or self.mtp_draft_vocab < 0
        ):
            raise ValueError(
                f"mtp_draft_vocab={self.mtp_draft_vocab!r} (--mtp-draft-vocab): expected an "
                "integer >= 0 "
                "(0 = the full vocabulary)"
            )
        if self.graph_optimization.enabled and not self.device.startswith("cuda"):
            raise ValueError(
                f"--graph-optimization-config use_cudagraph=true needs a CUDA device, got "
                f"--device {self.device}"
            )
        if self.ngram_impl not in ("auto", "op", "oracle"):
            raise ValueError(f"ngram_impl={self.ngram_impl!r}: expected 'auto', 'op' or 'oracle'")


def _json_flag(flag: str, text: str, known: set[str]) -> dict[str, Any]:
    """The JSON object of a FastDeploy-style config flag, refusing bad JSON and unknown keys."""
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} is not valid JSON ({e}): {text!r}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{flag} must be a JSON object, got {text!r}")
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{flag} has unknown keys {unknown}; known: {sorted(known)}")
    return data
