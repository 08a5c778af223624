"""The request keys a scenario may set at the top level of a request body, per endpoint and adapter.

A body key that is neither an OpenAI request field (chat or completions, as the OpenAI API
reference lists them), nor a field of SGLang's native /generate, nor one of the engine's own
fields declared below, is an error at load: a typo such as ``max_tokns`` is otherwise sent as is
and silently ignored by the server. Any other engine-specific field goes under ``extra_body:``,
whose keys are sent as they are (like the ``extra_body`` argument of the openai client).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

OPENAI_CHAT = frozenset(
    {
        "messages", "model", "audio", "frequency_penalty", "function_call", "functions",
        "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata",
        "modalities", "n", "parallel_tool_calls", "prediction", "presence_penalty",
        "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier", "seed",
        "service_tier", "stop", "store", "stream", "stream_options", "temperature",
        "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
        "web_search_options",
    }
)  # fmt: skip
OPENAI_COMPLETION = frozenset(
    {
        "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
        "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options",
        "suffix", "temperature", "top_p", "user",
    }
)  # fmt: skip
# SGLang's native /generate (GenerateReqInput); sampling options go inside sampling_params.
SGLANG_GENERATE = frozenset(
    {
        "text", "input_ids", "input_embeds", "image_data", "sampling_params", "rid",
        "return_logprob", "logprob_start_len", "top_logprobs_num", "token_ids_logprob",
        "return_text_in_logprobs", "stream", "lora_path", "custom_logit_processor",
        "return_hidden_states", "modalities", "log_metrics",
    }
)  # fmt: skip

# Fields each engine adds to its OpenAI endpoints (chat and completions). The fastdeploy
# adapter also serves refserver, which reads min_tokens.
ENGINE_FIELDS: dict[str, frozenset[str]] = {
    "fastdeploy": frozenset(
        {
            "min_tokens", "top_k", "min_p", "repetition_penalty", "include_stop_str_in_output",
            "bad_words", "bad_words_token_ids", "stop_token_ids", "chat_template",
            "chat_template_kwargs", "reasoning_max_tokens", "return_token_ids",
            "prompt_token_ids", "max_streaming_response_tokens", "disable_chat_template",
            "include_draft_logprobs", "prompt_logprobs", "request_id",
        }
    ),
    "vllm": frozenset(
        {
            "min_tokens", "top_k", "min_p", "repetition_penalty", "length_penalty",
            "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "skip_special_tokens",
            "spaces_between_special_tokens", "truncate_prompt_tokens", "prompt_logprobs",
            "allowed_token_ids", "bad_words", "add_generation_prompt", "continue_final_message",
            "add_special_tokens", "chat_template", "chat_template_kwargs", "guided_json",
            "guided_regex", "guided_choice", "guided_grammar", "priority", "request_id",
            "return_tokens_as_token_ids",
        }
    ),
    "sglang": frozenset(
        {
            "min_tokens", "top_k", "min_p", "repetition_penalty", "stop_token_ids",
            "ignore_eos", "skip_special_tokens", "no_stop_trim", "regex", "json_schema",
            "ebnf", "chat_template_kwargs", "separate_reasoning", "stream_reasoning", "rid",
            "lora_path", "return_hidden_states",
        }
    ),
}  # fmt: skip

EXTRA_BODY = "extra_body"


def allowed_fields(endpoint: str, adapter: str) -> frozenset[str]:
    """Keys a request body of this endpoint may hold at the top level with this adapter."""
    if endpoint == "generate":
        return SGLANG_GENERATE
    standard = OPENAI_CHAT if endpoint == "chat" else OPENAI_COMPLETION
    return standard | ENGINE_FIELDS.get(adapter, frozenset())


def describe(endpoint: str, adapter: str) -> str:
    """What `allowed_fields` holds, in words, for error messages."""
    if endpoint == "generate":
        return (
            "a field of SGLang's native /generate request (sampling options such as "
            "max_new_tokens go inside sampling_params)"
        )
    kind = "chat completion" if endpoint == "chat" else "completion"
    return f"an OpenAI {kind} request field or one the {adapter} adapter declares"


def closest(key: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``key`` (for 'did you mean'), or None when none is close."""
    matches = difflib.get_close_matches(key, sorted(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None
