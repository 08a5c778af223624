"""`specgate init [--engine E] [DIR]`: a starter gate in an engine team's repository.

Writes DIR/scenarios/<engine>.yaml (with a prompts.jsonl beside it), an empty DIR/baselines/ and
DIR/ci/specgate.yml (a GitHub Actions job), then prints the commands to run next. Existing files
are never overwritten.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"
ENGINES = ("refserver", "vllm", "fastdeploy", "sglang")


def add_parser(sub: argparse._SubParsersAction) -> None:
    init = sub.add_parser("init", help="write a starter scenario, baselines folder and CI job")
    init.add_argument("--engine", default="refserver", choices=ENGINES)
    init.add_argument("dir", nargs="?", default=".", metavar="DIR", help="default: here")


def cmd_init(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    scenario = root / "scenarios" / f"{args.engine}.yaml"
    relative_scenario = (Path("scenarios") / f"{args.engine}.yaml").as_posix()
    ci_text = (TEMPLATES / "ci.yml").read_text(encoding="utf-8")
    files = {
        scenario: (TEMPLATES / f"{args.engine}.yaml").read_text(encoding="utf-8"),
        root / "scenarios" / "prompts.jsonl": (TEMPLATES / "prompts.jsonl").read_text("utf-8"),
        root / "ci" / "specgate.yml": ci_text.replace("{scenario}", relative_scenario),
    }
    existing = [str(path) for path in files if path.exists()]
    if existing:
        print(f"error: not overwriting {', '.join(existing)}", file=sys.stderr)
        return 2
    (root / "baselines").mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    print(f"created {root / 'baselines'}/ (empty: `specgate baseline update` fills it)")
    cd = f"cd {shlex.quote(str(root))} && " if root != Path(".") else ""
    print("next, record the baseline, then run the gate against it:")
    print(f"  {cd}specgate baseline update {relative_scenario}")
    print(
        f"  {cd}specgate run --skip-kernel --scenario {relative_scenario} --junitxml e2e-junit.xml"
    )
    print("and copy ci/specgate.yml to .github/workflows/ to run both on every push")
    return 0
