"""specgate.progress: plain lines when the stream is not a terminal or under CI, a bar otherwise."""

from __future__ import annotations

import io

import pytest

from specgate.progress import Progress, append_step_summary, interactive


class _Terminal(io.StringIO):
    """A stream that says it is a terminal (no real terminal exists under pytest)."""

    def isatty(self) -> bool:
        return True


def test_plain_lines_every_tenth_and_at_the_end() -> None:
    stream = io.StringIO()
    progress = Progress(25, "kernel suite", stream)
    for i in range(25):
        progress.update(f"t{i}")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "kernel suite: 1/25 (4%): t0"
    assert lines[-1] == "kernel suite: 25/25 (100%): t24"
    assert 5 <= len(lines) <= 14, lines


def test_ci_means_plain_even_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert interactive(_Terminal())
    monkeypatch.setenv("CI", "true")
    assert not interactive(_Terminal())


def test_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    stream = _Terminal()
    progress = Progress(4, "baseline update", stream)
    for _ in range(4):
        progress.update("x")
    progress.close()
    assert "\r" in stream.getvalue() and "4/4" in stream.getvalue()


def test_step_summary_appends(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    append_step_summary("# one")
    append_step_summary("# two")
    assert target.read_text() == "# one\n# two\n"
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    append_step_summary("# three")  # unset: nothing written, no error
    assert "three" not in target.read_text()
