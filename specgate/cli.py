"""The `specgate` command line.

  specgate run                       kernel conformance (quick) + default scenarios vs refserver
  specgate kernel --impl MODULE:FN   the kernel conformance suite against your implementation
  specgate vectors export            the conformance vectors as JSON/YAML, for other frameworks
  specgate init [--engine E] [DIR]   a starter scenario, baselines folder and CI job
  specgate baseline update SCEN...   re-measure, show the diff, write atomically if invariants hold
  specgate report                    re-render the last run (text, or markdown with --report FILE)
  specgate compare SCEN...           acceptance records (SPEC §2.1) side by side, across engines
  specgate serve ARGS...             start refserver (python -m refserver ARGS...)

Exit codes: 0 all passed, 1 a check failed, 2 bad usage or a malformed scenario, baseline or
prompt file (found before any request is sent), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("specgate")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(".specgate-cache")
LAST_RUN = CACHE_DIR / "last-run.json"
DEFAULT_TAG = "default"


def _root(args: argparse.Namespace) -> Path:
    """The folder holding scenarios/: --root, else the source checkout, else the current
    directory."""
    if args.root:
        return Path(args.root).resolve()
    if (PROJECT_ROOT / "scenarios").is_dir():
        return PROJECT_ROOT
    return Path.cwd()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specgate",
        description="Verification suite for hybrid MTP + n-gram speculative decoding.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--root",
            default=None,
            help="project folder holding scenarios/ (default: the specgate checkout)",
        )
        p.add_argument(
            "--server-url",
            default=None,
            help="use this running server instead of launching the scenario's command",
        )

    run = sub.add_parser("run", help="kernel conformance + default scenarios against refserver")
    common(run)
    run.add_argument(
        "--scenario",
        action="append",
        default=[],
        help="scenario name or YAML path (repeatable; default: those tagged "
        f"'{DEFAULT_TAG}' in scenarios/)",
    )
    run.add_argument("--report", default=None, metavar="FILE", help="also write markdown here")
    run.add_argument(
        "--junitxml", default=None, metavar="FILE", help="JUnit XML, one case per request"
    )
    run.add_argument("--skip-kernel", action="store_true", help="skip the kernel conformance step")

    from specgate import kernel, scaffold

    kernel.add_parsers(sub)
    scaffold.add_parser(sub)

    baseline = sub.add_parser("baseline", help="manage baselines")
    bsub = baseline.add_subparsers(dest="baseline_command", metavar="ACTION", required=True)
    update = bsub.add_parser("update", help="re-measure scenarios and rewrite their baselines")
    common(update)
    update.add_argument(
        "scenarios", nargs="+", metavar="SCENARIO", help="scenario names or YAML paths"
    )
    update.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")

    compare = sub.add_parser(
        "compare",
        help="one table of acceptance records (SPEC §2.1) across scenarios: engines or configs",
    )
    common(compare)
    compare.add_argument(
        "scenarios", nargs="+", metavar="SCENARIO", help="scenario names or YAML paths"
    )
    compare.add_argument(
        "--measure",
        action="store_true",
        help="launch the servers and measure now (default: read each scenario's baseline)",
    )
    compare.add_argument("--markdown", default=None, metavar="FILE", help="also write it here")

    report = sub.add_parser("report", help="show the report of the last run")
    report.add_argument(
        "--from", dest="source", default=str(LAST_RUN), help=f"results file (default: {LAST_RUN})"
    )
    report.add_argument("--report", default=None, metavar="FILE", help="write markdown here")
    report.add_argument("--failing-only", action="store_true", help="only rows that failed")

    # `serve` passes every argument through (main() intercepts it before argparse, which cannot
    # forward options like --port); this entry only lists it in --help.
    sub.add_parser(
        "serve",
        help="start refserver: python -m refserver ARGS... (see serve --help)",
        add_help=False,
    )
    return parser


def _install_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so servers are torn down in `finally` blocks."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def _load(selectors: list[str], root: Path):
    from e2e.scenario import load_scenario, resolve_scenarios

    return [load_scenario(p) for p in resolve_scenarios(selectors, root / "scenarios")]


# --- run --------------------------------------------------------------------------------------


def _kernel_step() -> bool:
    """The packaged kernel suite, quick profile, default implementation, in a subprocess (its
    pytest session is separate from the gate's servers). Any non-zero exit is a failure."""
    command = [sys.executable, "-m", "specgate.cli", "kernel", "--profile", "quick"]
    print(f"kernel conformance (quick): {shlex.join(command)}", flush=True)
    started = time.monotonic()
    code = subprocess.call(command)
    print(
        f"kernel conformance: {'passed' if code == 0 else f'FAILED (exit {code})'} in "
        f"{time.monotonic() - started:.0f} s",
        flush=True,
    )
    return code == 0


def cmd_run(args: argparse.Namespace) -> int:
    from e2e import schedule
    from e2e.junit import write_junit
    from e2e.report import render_markdown, render_text, save_results
    from e2e.runner import check_baselines
    from e2e.server import ServerPool
    from specgate.progress import append_step_summary

    root = _root(args)
    scenarios = _load(args.scenario, root)  # every input file is checked before any work
    if not args.scenario:
        scenarios = [s for s in scenarios if DEFAULT_TAG in s.tags]
    if not scenarios:
        print(f"no scenarios to run in {root / 'scenarios'}", file=sys.stderr)
        return 2
    check_baselines(scenarios)
    kernel_ok = True if args.skip_kernel else _kernel_step()
    print(f"running {len(scenarios)} scenarios: {', '.join(s.name for s in scenarios)}", flush=True)
    results = []
    pool = ServerPool(CACHE_DIR / "logs", args.server_url)
    plan = schedule.Schedule(pool)
    try:
        order = schedule.order(scenarios)
        plan.plan(order)
        for scenario in order:
            result = plan.run(scenario)
            print(f"  {result.status:7} {scenario.name} ({result.duration_s:.1f} s)", flush=True)
            results.append(result)
    finally:
        pool.close()
    print()
    print(render_text(results))
    save_results(results, LAST_RUN)
    markdown = render_markdown(results)
    if args.report:
        Path(args.report).write_text(markdown, encoding="utf-8")
        print(f"markdown report: {args.report}")
    if args.junitxml:
        write_junit(results, Path(args.junitxml))
        print(f"JUnit XML: {args.junitxml}")
    append_step_summary(markdown)
    scenarios_ok = all(r.status in ("passed", "skipped") for r in results)
    if not kernel_ok:
        print("FAILED: kernel conformance", file=sys.stderr)
    return 0 if kernel_ok and scenarios_ok else 1


# --- baseline update --------------------------------------------------------------------------


def cmd_baseline_update(args: argparse.Namespace) -> int:
    from e2e.baseline import (
        BaselineError,
        check_dtype,
        diff_baselines,
        load_baseline,
        write_baseline_atomic,
    )
    from e2e.runner import build_baseline, skip_reason
    from e2e.schedule import Schedule
    from e2e.server import ServerPool, ServerStartError
    from specgate.progress import Progress

    root = _root(args)
    scenarios = _load(args.scenarios, root)
    for scenario in scenarios:
        if scenario.kind != "metrics":
            print(f"{scenario.path}: a {scenario.kind} scenario has no baseline", file=sys.stderr)
            return 2
    failed = False
    pool = ServerPool(CACHE_DIR / "logs", args.server_url)
    plan = Schedule(pool)
    plan.plan(scenarios)
    progress = Progress(len(scenarios), "baseline update")
    try:
        for scenario in scenarios:
            print(f"== {scenario.name} ({scenario.path})", flush=True)
            reason = skip_reason(scenario, pool)
            if reason:
                print(f"cannot measure: {reason}", file=sys.stderr)
                failed = True
                continue
            try:
                check_dtype(None, scenario.server.command, scenario.path)
            except BaselineError as exc:
                print(f"cannot record a baseline: {exc}", file=sys.stderr)
                failed = True
                continue
            try:
                measured = plan.measure(scenario, provenance=True)
            except ServerStartError as exc:
                print(str(exc), file=sys.stderr)
                failed = True
                continue
            progress.update(scenario.name)
            new = build_baseline(scenario, measured.outcomes, measured.provenance or {})
            try:
                old = load_baseline(scenario.baseline)
            except BaselineError as exc:
                old = None
                if scenario.baseline.exists():
                    print(f"(old baseline unreadable, shown as new: {exc})")
            print(diff_baselines(old, new))
            problems = measured.errors() + measured.invariant_failures()
            if problems:
                print(
                    f"NOT written: {len(problems)} problems (a baseline is only written when "
                    "every request succeeds and every invariant holds):",
                    file=sys.stderr,
                )
                for problem in problems:
                    print(f"  {problem}", file=sys.stderr)
                failed = True
            elif args.dry_run:
                print(f"dry run: {scenario.baseline} not written")
            else:
                write_baseline_atomic(scenario.baseline, new)
                print(f"wrote {scenario.baseline}")
    finally:
        progress.close()
        pool.close()
    return 1 if failed else 0


# --- compare ----------------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace) -> int:
    """The reviewer's table: every request of every scenario as the common acceptance record."""
    from e2e.acceptance import column, column_from_baseline, render_markdown, render_text
    from e2e.baseline import BaselineError
    from e2e.runner import skip_reason
    from e2e.schedule import Schedule
    from e2e.server import ServerPool, ServerStartError

    scenarios = _load(args.scenarios, _root(args))
    for scenario in scenarios:
        if scenario.kind != "metrics":
            print(f"{scenario.path}: a {scenario.kind} scenario has no metrics", file=sys.stderr)
            return 2
    columns = []
    pool = ServerPool(CACHE_DIR / "logs", args.server_url)
    plan = Schedule(pool)
    plan.plan(scenarios)
    try:
        for scenario in scenarios:
            if not args.measure:
                try:
                    columns.append(column_from_baseline(scenario))
                except BaselineError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                continue
            reason = skip_reason(scenario, pool)
            if reason:
                print(f"cannot measure: {reason}", file=sys.stderr)
                return 1
            try:
                measured = plan.measure(scenario)
            except ServerStartError as exc:
                print(str(exc), file=sys.stderr)
                return 1
            for error in measured.errors():
                print(f"{scenario.name}: {error}", file=sys.stderr)
            if measured.errors():
                return 1
            columns.append(column(scenario, {o.request_id: o.fields for o in measured.outcomes}))
    finally:
        pool.close()
    print(render_text(columns))
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(columns) + "\n", encoding="utf-8")
        print(f"markdown table: {args.markdown}")
    return 0


# --- report / serve ---------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from e2e.report import load_results, render_markdown, render_text

    source = Path(args.source)
    if not source.is_file():
        print(f"--from {source}: no results yet; run `specgate run` first", file=sys.stderr)
        return 2
    results = load_results(source)
    print(render_text(results, only_failing_rows=args.failing_only))
    if args.report:
        Path(args.report).write_text(render_markdown(results), encoding="utf-8")
        print(f"markdown report: {args.report}")
    return 0 if all(r.status in ("passed", "skipped") for r in results) else 1


def serve(args: list[str]) -> None:
    """Replace this process with refserver, so signals and the exit code are refserver's own."""
    os.execv(sys.executable, [sys.executable, "-m", "refserver", *args])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command is None:
        parser.print_help()
        return 0
    from e2e.baseline import BaselineFormatError
    from e2e.scenario import ScenarioError

    _install_sigterm()
    from specgate import kernel, scaffold

    handlers = {
        "run": cmd_run,
        "report": cmd_report,
        "compare": cmd_compare,
        "kernel": kernel.cmd_kernel,
        "init": scaffold.cmd_init,
    }
    try:
        if args.command == "baseline":
            return cmd_baseline_update(args)
        if args.command == "vectors":
            return kernel.cmd_vectors_export(args)
        return handlers[args.command](args)
    except (ScenarioError, BaselineFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; servers stopped, no baseline was changed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
