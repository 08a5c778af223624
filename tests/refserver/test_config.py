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
        ('{"method":"ngram","num_speculative_tokens":17}', "num_speculative_tokens=17"),
        ('{"method":"mtp","num_speculative_tokens":2,"num_model_steps":3}', "num_model_steps=3"),
        ('{"method":"ngram","num_speculative_tokens":2,"min_ngram_size":0}', "min_ngram_size=0"),
        ('{"method":"mtp","num_speculative_tokens":2,"mtp_strategy":"x"}', "mtp_strategy='x'"),
        ('{"method":"ngram","num_speculative_tokens":2,"bogus":1}', "unknown keys"),
    ],
)
def test_bad_config_names_the_key(text, match):
    with pytest.raises(ValueError, match=match):
        SpeculativeConfig.from_json(text)


def test_graph_optimization_config_takes_fastdeploys_keys():
    from refserver.config import GraphOptimizationConfig

    c = GraphOptimizationConfig.from_json(
        '{"use_cudagraph":true,"use_unique_memory_pool":true,"draft_model_use_cudagraph":true}'
    )
    assert (c.use_cudagraph, c.draft_model_use_cudagraph, c.use_unique_memory_pool) == (
        True,
        True,
        True,
    )
    assert not GraphOptimizationConfig.from_json(None).enabled
    sizes = GraphOptimizationConfig.from_json(
        '{"use_cudagraph":true,"cudagraph_capture_sizes":[1,4]}'
    )
    assert sizes.cudagraph_capture_sizes == (1, 4)
    assert GraphOptimizationConfig.from_json('{"use_cudagraph":true}').graph_opt_level == 0
    compiled = GraphOptimizationConfig.from_json('{"use_cudagraph":true,"graph_opt_level":2}')
    assert compiled.graph_opt_level == 2


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "--graph-optimization-config is not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('{"use_cudagraph":true,"bogus":1}', r"unknown keys \['bogus'\]"),
        ('{"use_cudagraph":"yes"}', "use_cudagraph='yes'"),
        ('{"draft_model_use_cudagraph":true}', "needs use_cudagraph=true"),
        ('{"use_cudagraph":true,"cudagraph_capture_sizes":[0]}', "cudagraph_capture_sizes"),
        ('{"use_cudagraph":true,"cudagraph_capture_sizes":4}', "expected a list"),
        ('{"use_cudagraph":true,"graph_opt_level":1}', "graph_opt_level=1: expected 0"),
        ('{"use_cudagraph":true,"graph_opt_level":true}', "graph_opt_level=True"),
        ('{"graph_opt_level":2}', "graph_opt_level=2 needs use_cudagraph=true"),
    ],
)
def test_bad_graph_optimization_config_names_the_key(text, match):
    from refserver.config import GraphOptimizationConfig

    with pytest.raises(ValueError, match=match):
        GraphOptimizationConfig.from_json(text)


def test_cuda_graphs_are_refused_on_cpu():
    from refserver.config import EngineConfig, GraphOptimizationConfig

    with pytest.raises(
        ValueError, match="--graph-optimization-config use_cudagraph=true needs a CUDA device"
    ):
        EngineConfig(graph_optimization=GraphOptimizationConfig(use_cudagraph=True), device="cpu")


def test_cuda_graph_buckets():
    from refserver.cuda_graphs import capture_sizes

    assert capture_sizes(8, None) == [1, 2, 4, 8]
    assert capture_sizes(6, None) == [1, 2, 4, 6]
    assert capture_sizes(8, (1, 3, 16)) == [1, 3, 8]


def test_cache_windows():
    from refserver.cuda_graphs import bucket_for, kv_buckets

    assert kv_buckets(2055) == [256, 512, 1024, 2048, 2055]
    assert kv_buckets(256) == [256]
    assert kv_buckets(100) == [100]
    windows = kv_buckets(2055)
    assert [bucket_for(windows, n) for n in (1, 256, 257, 2049, 2055)] == [
        256,
        256,
        512,
        2055,
        2055,
    ]
    with pytest.raises(ValueError, match="2056 exceeds the largest bucket 2055"):
        bucket_for(windows, 2056)
