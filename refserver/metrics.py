"""Acceptance metrics: per-request `speculate_metrics` (SPEC §2) and vLLM-named Prometheus counters."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class RequestMetrics:
    """Accumulates `accept_num` per engine step for one request.

    accept_num is the number of tokens emitted to the client in a step (accepted drafts + the
    target's own token), after cutting at EOS, stop strings and max_tokens. The prefill step
    that emits the first token counts with accept_num = 1.
    """

    K: int
    accept_nums: list[int] = field(default_factory=list)

    def record(self, accept_num: int) -> None:
        if not 0 <= accept_num <= self.K + 1:
            raise ValueError(f"accept_num={accept_num} outside 0..K+1 (K={self.K})")
        self.accept_nums.append(accept_num)

    def to_dict(self) -> dict[str, object]:
        K, steps = self.K, len(self.accept_nums)
        per_head = [sum(1 for a in self.accept_nums if a > i) for i in range(K + 1)]
        accepted = sum(self.accept_nums)
        return {
            "accepted_tokens": accepted,
            "rejected_tokens": steps * (K + 1) - accepted,
            "accept_ratio": 1 - steps / accepted if accepted else 0.0,
            "average_accept_length": accepted / steps if steps else 0.0,
            "accepted_tokens_per_head": per_head,
            "accept_ratio_per_head": [
                per_head[i + 1] / per_head[i] if per_head[i] else 0.0 for i in range(K)
            ],
        }


class PrometheusCounters:
    """Counters with vLLM's spec-decode names, rendered in the Prometheus text format.

    A verification step with d > 0 draft tokens adds 1 draft, d draft tokens, and the number of
    drafts that reached the client (accept_num - 1); position i counts when draft i+1 did.
    """

    def __init__(self, model_name: str, K: int) -> None:
        self._lock = threading.Lock()
        self._labels = f'model_name="{model_name}"'
        self.K = K
        self.num_drafts = 0
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        self.accepted_per_pos = [0] * max(K, 1)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.requests_finished = 0
        self.running = 0
        self.waiting = 0

    def record_verify(self, num_draft_tokens: int, accept_num: int) -> None:
        if num_draft_tokens <= 0:
            return
        accepted = max(accept_num - 1, 0)
        with self._lock:
            self.num_drafts += 1
            self.num_draft_tokens += num_draft_tokens
            self.num_accepted_tokens += accepted
            for i in range(accepted):
                self.accepted_per_pos[i] += 1

    def record_tokens(self, prompt: int = 0, generated: int = 0, finished: int = 0) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.generation_tokens += generated
            self.requests_finished += finished

    def render(self) -> str:
        lab = self._labels
        with self._lock:
            lines = []

            def counter(name: str, value: int, help_text: str) -> None:
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} counter")
                lines.append(f"{name}_total{{{lab}}} {value}")

            def gauge(name: str, value: int, help_text: str) -> None:
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} gauge")
                lines.append(f"{name}{{{lab}}} {value}")

            counter(
                "vllm:spec_decode_num_drafts", self.num_drafts, "Number of spec decoding drafts."
            )
            counter(
                "vllm:spec_decode_num_draft_tokens",
                self.num_draft_tokens,
                "Number of draft tokens.",
            )
            counter(
                "vllm:spec_decode_num_accepted_tokens",
                self.num_accepted_tokens,
                "Number of accepted tokens.",
            )
            name = "vllm:spec_decode_num_accepted_tokens_per_pos"
            lines.append(f"# HELP {name} Accepted tokens per draft position.")
            lines.append(f"# TYPE {name} counter")
            for i, v in enumerate(self.accepted_per_pos[: self.K]):
                lines.append(f'{name}_total{{{lab},position="{i}"}} {v}')
            counter("vllm:prompt_tokens", self.prompt_tokens, "Number of prefill tokens processed.")
            counter("vllm:generation_tokens", self.generation_tokens, "Number of generated tokens.")
            counter("vllm:request_success", self.requests_finished, "Count of finished requests.")
            gauge("vllm:num_requests_running", self.running, "Requests in the running batch.")
            gauge("vllm:num_requests_waiting", self.waiting, "Requests waiting for a slot.")
            return "\n".join(lines) + "\n"
