"""The named speculative configurations (FastDeploy `--speculative-config` JSON; None = no
speculation), defined once: the tests, the device check and the benchmarks take them from here."""

from __future__ import annotations

NGRAM = '{"method":"ngram","num_speculative_tokens":5,"max_ngram_size":3,"min_ngram_size":1}'
HYBRID = (
    '{"method":"mtp","num_speculative_tokens":5,"num_model_steps":3,'
    '"mtp_strategy":"with_ngram","max_ngram_size":3,"min_ngram_size":1}'
)
# The hybrid with refserver's adaptive drafting (refserver/adaptive.py): K=5 s=3 at most.
HYBRID_ADAPTIVE = HYBRID[:-1] + ',"adaptive":true}'
SPEC_CONFIGS: dict[str, str | None] = {
    "none": None,
    "ngram K=5": NGRAM,
    "mtp s=1": '{"method":"mtp","num_speculative_tokens":1,"num_model_steps":1}',
    "mtp s=3": '{"method":"mtp","num_speculative_tokens":3,"num_model_steps":3}',
    "hybrid K=5 s=3": HYBRID,
    "hybrid K=5 s=1": (
        '{"method":"mtp","num_speculative_tokens":5,"num_model_steps":1,'
        '"mtp_strategy":"with_ngram","max_ngram_size":3,"min_ngram_size":1}'
    ),
    "hybrid K=3 s=1": (
        '{"method":"mtp","num_speculative_tokens":3,"num_model_steps":1,'
        '"mtp_strategy":"with_ngram","max_ngram_size":3,"min_ngram_size":1}'
    ),
    "adaptive hybrid K=5 s=3": HYBRID_ADAPTIVE,
    # K=5 s=1 adaptive: on repetitive text it drafts from the lookup alone where that pays, and
    # one MTP step otherwise (session 5: the best config natively
    # in bf16 on an AVX-512-BF16 CPU; on AVX2 float32 it tied hybrid K=5 s=1).
    "adaptive hybrid K=5 s=1": (
        '{"method":"mtp","num_speculative_tokens":5,"num_model_steps":1,'
        '"mtp_strategy":"with_ngram","max_ngram_size":3,"min_ngram_size":1,"adaptive":true}'
    ),
    # K=8: where a verification of 9 tokens costs little more than one (AMX bf16: 1.2x), the
    # longer n-gram continuations pay (session 6, 15 repetitive prompts: 2.77 tokens a step
    # against K=5's 2.47); adaptive drafts fewer where the verify cost grows with T.
    "hybrid K=8 s=1": (
        '{"method":"mtp","num_speculative_tokens":8,"num_model_steps":1,'
        '"mtp_strategy":"with_ngram","max_ngram_size":3,"min_ngram_size":1}'
    ),
    "adaptive hybrid K=8 s=1": (
        '{"method":"mtp","num_speculative_tokens":8,"num_model_steps":1,'
        '"mtp_strategy":"with_ngram","max_ngram_size":3,"min_ngram_size":1,"adaptive":true}'
    ),
    # K=16, refserver's maximum: more tokens a step than K=8 on repetitive text, but on the
    # 2-core Xeon of session 7 slower in both dtypes (docs/notes_i16f.md); adaptive K=16 caps
    # its drafts and stays near adaptive K=8. For CPUs or GPUs where a long verification is
    # cheaper.
    "hybrid K=16 s=1": (
        '{"method":"mtp","num_speculative_tokens":16,"num_model_steps":1,'
        '"mtp_strategy":"with_ngram","max_ngram_size":3,"min_ngram_size":1}'
    ),
    "adaptive hybrid K=16 s=1": (
        '{"method":"mtp","num_speculative_tokens":16,"num_model_steps":1,'
        '"mtp_strategy":"with_ngram","max_ngram_size":3,"min_ngram_size":1,"adaptive":true}'
    ),
}
