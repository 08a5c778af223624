"""`specgate vectors export` and README's torch-free adapter: the adapter, exactly as README shows
it, passes a correct numpy kernel, fails a kernel with the threshold edge off by one, and never
imports torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from refimpl.vectors import load_vectors
from specgate.cli import main

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "refimpl" / "core.py"  # plain Python over lists: no torch import

# A numpy kernel for the adapter to test: refimpl's list core, loaded by path so that importing
# it imports no torch. `EDGE_SHIFT` 1 moves the threshold edge by one (a real bug class).
NUMPY_KERNEL = f"""
import importlib.util

spec = importlib.util.spec_from_file_location("core", {str(CORE)!r})
core = importlib.util.module_from_spec(spec)
spec.loader.exec_module(core)
EDGE_SHIFT = 0


def hybrid_mtp_ngram(token_ids_all, prompt_lens, pre_ids, step_idx, draft_token_num,
                     draft_tokens, seq_lens_this_time, seq_lens_decoder, max_dec_len,
                     max_ngram_size, min_ngram_size, max_draft_tokens, threshold=1024,
                     pad_to_max=False):
    lens = seq_lens_this_time.tolist()
    rows = range(len(lens))
    prompts = [token_ids_all[b, : prompt_lens[b]].tolist() if lens[b] > 0 else [] for b in rows]
    generated = [pre_ids[b, : step_idx[b] + 1].tolist() if lens[b] > 0 else [] for b in rows]
    drafts = draft_tokens.tolist()
    core.hybrid_mtp_ngram_lists(prompts, generated, step_idx.tolist(), drafts, lens,
                                seq_lens_decoder.tolist(), max_dec_len.tolist(), max_ngram_size,
                                min_ngram_size, max_draft_tokens, threshold + EDGE_SHIFT,
                                pad_to_max)
    draft_tokens[:] = drafts
    seq_lens_this_time[:] = lens
"""
NO_TORCH = "import sys; sys.modules['torch'] = None; sys.argv[1:] = ['vectors.json']; "


def _readme_adapter() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- vectors-adapter -->\n```python\n(.*?)```", readme, re.S)
    assert block, "README lost the vectors adapter block"
    return block.group(1)


def test_export_json_and_yaml_hold_every_vector(tmp_path: Path) -> None:
    assert main(["vectors", "export", "-o", str(tmp_path / "v.json")]) == 0
    assert main(["vectors", "export", "--format", "yaml", "-o", str(tmp_path / "v.yaml")]) == 0
    as_json = json.loads((tmp_path / "v.json").read_text())
    as_yaml = yaml.safe_load((tmp_path / "v.yaml").read_text())
    assert as_json == as_yaml
    names = [v.name for v in load_vectors()]
    assert [c["name"] for c in as_json["cases"]] == names
    assert list(as_json["cases"][0]["inputs"]) == list(as_json["dtypes"])


@pytest.mark.parametrize(("shift", "code"), [(0, 0), (1, 1)])
def test_readme_adapter_runs_without_torch(tmp_path: Path, shift: int, code: int) -> None:
    assert main(["vectors", "export", "-o", str(tmp_path / "vectors.json")]) == 0
    kernel = NUMPY_KERNEL.replace("EDGE_SHIFT = 0", f"EDGE_SHIFT = {shift}")
    (tmp_path / "mykernel.py").write_text(kernel)
    (tmp_path / "run_vectors.py").write_text(_readme_adapter())
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH + "exec(open('run_vectors.py').read())"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin"},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    total = len(load_vectors())
    if shift == 0:
        assert f"{total} of {total} vectors pass" in output
    else:
        assert "FAIL threshold" in output or "FAIL " in output, output
        assert f"{total} of {total}" not in output
