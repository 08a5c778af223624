"""refserver: a small real speculative-decoding engine (SmolLM2-135M + MTP head + n-gram).

Served over an OpenAI-compatible HTTP API with per-request `speculate_metrics`.
"""
