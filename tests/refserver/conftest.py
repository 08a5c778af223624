"""Fixtures for refserver tests: the real model (loaded once) and real server processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.server import ServerProcess, log_excerpt
from tests.refserver.helpers import HYBRID, launch_server


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: CI has 2 cores and may run tests in parallel, and OpenMP spinning
    on an oversubscribed machine is many times slower than a single thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model_and_tokenizer():
    pytest.importorskip("gguf")
    from refserver.model import load_model

    return load_model()


@pytest.fixture(scope="module")
def hybrid_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """A hybrid (MTP s=3 + n-gram, K=5) server, shared by a test module."""
    server = launch_server(tmp_path_factory.mktemp("srv"), "--speculative-config", HYBRID)
    yield server
    code = server.stop()
    print(f"refserver exit code {code}; log:\n{log_excerpt(server.log_path, 15)}")
