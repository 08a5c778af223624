"""benchmarks/host_cost.py on CPU: ops are counted only outside the phases, and a short run on
the real model prints its table (the numbers themselves are timings, never asserted)."""

from __future__ import annotations

import torch

from benchmarks import host_cost


def test_ops_inside_a_phase_are_not_counted():
    phase = host_cost._PhaseTimer(lambda x: (x * 2 + 1).sum())
    counter = host_cost._OpCounter([phase])
    x = torch.ones(3)
    with counter:
        y = x + 1  # one op outside
        phase(y)  # three ops inside
        z = y * 3  # one op outside
    assert counter.count == 2, counter.by_op
    assert counter.by_op == {"aten.add": 1, "aten.mul": 1}
    assert phase.calls == 1 and phase.seconds > 0 and not phase.active
    assert torch.equal(z, torch.full((3,), 6.0))


def test_short_run_prints_one_row_per_config_and_concurrency(capsys):
    argv = ["--spec", "none", "--spec", "hybrid53", "--concurrency", "1", "2"]
    assert host_cost.main([*argv, "--prompts", "2", "--max-tokens", "6"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    table = [r.strip("|").split("|") for r in rows[1:]]  # after the header
    assert [(c[0].strip(), c[1].strip()) for c in table] == [
        ("none", "1"),
        ("none", "2"),
        ("hybrid53", "1"),
        ("hybrid53", "2"),
    ]
    for cells in table:
        steps, ops = int(cells[2]), float(cells[7])
        assert steps > 0 and ops > 0, cells
