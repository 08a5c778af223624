"""--speculative-config parsing (FastDeploy keys) and its errors."""

from __future__ import annotations

import pytest

from refserver.config import SpeculativeConfig


def test_hybrid_config():
    c = SpeculativeConfig.from_json(
        '{"method":"mtp","num_speculative_tokens":5,"num_model_steps":3,'
        '"mtp_strategy":"with_ngram","max_ngram_size":3,"min_ngram_size":1}'
    )
    assert (c.K, c.mtp_steps, c.uses_ngram) == (5, 3, True)


def test_plain_methods():
    assert SpeculativeConfig.from_json(None).K == 0
    assert SpeculativeConfig.from_json('{"method":"none"}').K == 0
    ngram = SpeculativeConfig.from_json('{"method":"ngram","num_speculative_tokens":4}')
    assert (ngram.K, ngram.mtp_steps, ngram.uses_ngram) == (4, 0, True)
    mtp = SpeculativeConfig.from_json('{"method":"mtp","num_speculative_tokens":1}')
    assert (mtp.K, mtp.mtp_steps, mtp.uses_ngram) == (1, 1, False)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"method":"eagle"}', "method='eagle'"),
        ('{"method":"ngram","num_speculative_tokens":9}', "num_speculative_tokens=9"),
        ('{"method":"mtp","num_speculative_tokens":2,"num_model_steps":3}', "num_model_steps=3"),
        ('{"method":"ngram","num_speculative_tokens":2,"min_ngram_size":0}', "min_ngram_size=0"),
        ('{"method":"mtp","num_speculative_tokens":2,"mtp_strategy":"x"}', "mtp_strategy='x'"),
        ('{"method":"ngram","num_speculative_tokens":2,"bogus":1}', "unknown keys"),
    ],
)
def test_bad_config_names_the_key(text, match):
    with pytest.raises(ValueError, match=match):
        SpeculativeConfig.from_json(text)
