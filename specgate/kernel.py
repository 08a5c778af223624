"""`specgate kernel` (the packaged kernel suite against MODULE:FN) and `specgate vectors export`.

`specgate kernel` runs pytest in this process on ``specgate/kernel_suite`` with its own
configuration file, so the caller's pytest settings and conftest files do not change what runs.
Exit status: 0 the implementation conforms, 1 mismatches (each with its report and reproduce
commands) or nothing ran, 2 a usage error such as an ``--impl`` that cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from specgate.progress import Progress, append_step_summary, interactive
from specgate.pytest_plugin import KERNEL_SUITE

SUITE_INI = KERNEL_SUITE / "suite.ini"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parsers(sub: argparse._SubParsersAction) -> None:
    kernel = sub.add_parser(
        "kernel", help="run the kernel conformance suite against an implementation"
    )
    kernel.add_argument(
        "--impl",
        default=None,
        metavar="MODULE:FN",
        help="implementation under test, imported with the current directory first on "
        "sys.path (default: the op cuda_ext, else the oracle, which SPECGATE_REQUIRE_OP forbids)",
    )
    kernel.add_argument("--profile", default="quick", choices=("quick", "full"))
    kernel.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    kernel.add_argument("--seed", default=None, help="base seed (integer or 'random')")
    kernel.add_argument(
        "--junitxml", default=None, metavar="FILE", help="JUnit XML, one case per test"
    )
    kernel.add_argument("--report", default=None, metavar="FILE", help="markdown report here")
    kernel.add_argument("-k", dest="keyword", default=None, help="only tests matching (pytest -k)")
    kernel.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")

    vectors = sub.add_parser("vectors", help="the conformance vectors, for other frameworks")
    vsub = vectors.add_subparsers(dest="vectors_command", metavar="ACTION", required=True)
    export = vsub.add_parser("export", help="write the vectors as YAML or JSON")
    export.add_argument("--format", default="json", choices=("json", "yaml"))
    export.add_argument("-o", "--output", default=None, metavar="FILE", help="default: stdout")


# --- specgate kernel --------------------------------------------------------------------------


class _Recorder:
    """pytest plugin object: progress, and the failures for the markdown report."""

    def __init__(self) -> None:
        self.failures: list[tuple[str, str]] = []
        self.counts: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0}
        self.header: list[str] = []
        self.progress: Progress | None = None

    def pytest_report_collectionfinish(self, config, start_path, items) -> None:
        from specgate.pytest_plugin import pytest_report_collectionfinish

        self.header = pytest_report_collectionfinish(config, start_path, items)
        self.progress = Progress(len(items), "kernel suite") if interactive() else None

    def pytest_report_teststatus(self, report, config):
        """On a terminal the tqdm bar shows progress, so passes print no dot."""
        if self.progress is not None and report.when == "call" and report.passed:
            return "passed", "", "PASSED"
        return None

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.counts["failed"] += 1
            self.failures.append((report.nodeid, report.longreprtext))
        elif report.when == "call" and report.passed:
            self.counts["passed"] += 1
        elif report.skipped:
            self.counts["skipped"] += 1
        if self.progress is not None and (report.when == "call" or report.skipped):
            self.progress.update(report.nodeid.rsplit("::", 1)[-1])

    def pytest_sessionfinish(self, session) -> None:
        if self.progress is not None:
            self.progress.close()

    def markdown(self, code: int) -> str:
        verdict = "conforms" if code == 0 else "**does not conform**"
        lines = ["## specgate kernel suite", "", *[f"- {h}" for h in self.header]]
        lines += [
            f"- result: {verdict}: {self.counts['passed']} passed, {self.counts['failed']} "
            f"failed, {self.counts['skipped']} skipped",
            "",
        ]
        for nodeid, text in self.failures[:20]:
            lines += [f"### `{nodeid}`", "", "```", text.strip()[-4000:], "```", ""]
        if len(self.failures) > 20:
            lines.append(f"... and {len(self.failures) - 20} more failures")
        return "\n".join(lines) + "\n"


def _usage_problem(args: argparse.Namespace) -> str | None:
    """Check --impl and --device before pytest starts, so a typo is exit 2 with its reason."""
    if args.impl:
        from refimpl import impls

        try:
            impls.load(args.impl)
        except ValueError as exc:
            return str(exc)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "--device cuda: torch.cuda.is_available() is False here"
    if args.seed not in (None, "random"):
        try:
            int(args.seed)
        except ValueError:
            return f"--seed {args.seed!r}: expected an integer or 'random'"
    return None


def pytest_args(args: argparse.Namespace) -> list[str]:
    command = [
        "-c", str(SUITE_INI), "--rootdir", str(KERNEL_SUITE), "-p", "no:cacheprovider",
        "-m", "kernel", "-q", "-rfE", str(KERNEL_SUITE),
        "--kernel-profile", args.profile, "--kernel-device", args.device,
    ]  # fmt: skip
    if args.impl:
        command += ["--impl", args.impl]
    if args.seed is not None:
        command += ["--kernel-seed", str(args.seed)]
    if args.junitxml:
        command += ["--junitxml", str(Path(args.junitxml).resolve())]
    if args.keyword:
        command += ["-k", args.keyword]
    if args.exitfirst:
        command.append("-x")
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        command += ["-p", "specgate"]  # the pytest11 entry point, by name
    return command


def cmd_kernel(args: argparse.Namespace) -> int:
    import pytest

    problem = _usage_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if not args.impl:
        from refimpl import impls

        try:  # the default: under SPECGATE_REQUIRE_OP a failed build is an error, not the oracle
            impls.default(args.device)
        except RuntimeError as exc:  # cuda_ext.build.OpBuildError, with the compiler's output
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
    recorder = _Recorder()
    started = time.monotonic()
    code = int(pytest.main(pytest_args(args), plugins=[recorder]))
    elapsed = time.monotonic() - started
    if code == pytest.ExitCode.USAGE_ERROR:
        return EXIT_USAGE
    result = EXIT_OK if code == pytest.ExitCode.OK else EXIT_FAILED
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("FAILED: the kernel suite collected no tests", file=sys.stderr)
    markdown = recorder.markdown(result)
    if args.report:
        Path(args.report).write_text(markdown, encoding="utf-8")
        print(f"markdown report: {args.report}")
    append_step_summary(markdown)
    verdict = "conforms" if result == EXIT_OK else f"FAILED (pytest exit {code})"
    print(f"kernel suite: {verdict} in {elapsed:.0f} s", flush=True)
    return result


# --- specgate vectors export ------------------------------------------------------------------

DTYPES = {
    "token_ids_all": "int64", "prompt_lens": "int64", "pre_ids": "int64", "step_idx": "int64",
    "draft_token_num": "int32", "draft_tokens": "int64", "seq_lens_this_time": "int32",
    "seq_lens_decoder": "int32", "max_dec_len": "int64",
}  # fmt: skip
MATRICES = ("token_ids_all", "pre_ids", "draft_tokens")  # [B, S]; the others are [B]


def _plain(name: str, tensor) -> list:
    return tensor.tolist() if name in MATRICES else tensor.reshape(-1).tolist()


def export_document() -> dict:
    """The vectors as plain lists: inputs in the op's argument order ([B] shapes), then args."""
    from refimpl.vectors import SCALARS, load_vectors

    cases = []
    for vector in load_vectors():
        batch = vector.batch
        tensors = batch.tensors()
        cases.append(
            {
                "name": vector.name,
                "rule": vector.rule,
                "why": " ".join(vector.why.split()),
                "inputs": {k: _plain(k, tensors[k]) for k in DTYPES},
                "args": {k: getattr(batch, k) for k in SCALARS},
                "expected": {
                    "draft_tokens": vector.expected_draft_tokens.tolist(),
                    "seq_lens_this_time": vector.expected_seq_lens_this_time.tolist(),
                },
            }
        )
    return {
        "format": "specgate hybrid_mtp_ngram conformance vectors, version 1 (SPEC §1)",
        "call": "fn(*inputs in this order, *args in this order); mutates draft_tokens and "
        "seq_lens_this_time in place",
        "dtypes": DTYPES,
        "cases": cases,
    }


def cmd_vectors_export(args: argparse.Namespace) -> int:
    document = export_document()
    if args.format == "json":
        text = json.dumps(document, indent=1) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(document, sort_keys=False, width=100)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {len(document['cases'])} vectors to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK
