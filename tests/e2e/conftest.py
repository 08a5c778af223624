"""Fixtures and hooks of the e2e suite; the logic lives in e2e.pytest_plugin."""

from __future__ import annotations

import pytest

from e2e import pytest_plugin

_SESSION_KEY = pytest.StashKey[pytest_plugin.E2ESession]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    pytest_plugin.generate_tests(metafunc)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    pytest_plugin.order_items(items)


def _session(config: pytest.Config) -> pytest_plugin.E2ESession:
    """Created on first use: this conftest is loaded during collection, after sessionstart."""
    if _SESSION_KEY not in config.stash:
        log_dir = config.rootpath / ".specgate-cache" / "pytest-logs"
        config.stash[_SESSION_KEY] = pytest_plugin.E2ESession(config, log_dir)
    return config.stash[_SESSION_KEY]


def pytest_collection_finish(session: pytest.Session) -> None:
    _session(session.config).plan(session.items)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _SESSION_KEY in session.config.stash:
        session.config.stash[_SESSION_KEY].finish()


@pytest.fixture(scope="session")
def e2e_session(pytestconfig: pytest.Config) -> pytest_plugin.E2ESession:
    return _session(pytestconfig)
