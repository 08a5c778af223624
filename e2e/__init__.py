"""The end-to-end harness: scenarios (YAML) -> server lifecycle -> requests -> metric adapters ->
invariants + tolerance comparison against baselines -> report and exit code.

The harness knows a server only through its launch command and HTTP, so FastDeploy, vLLM, SGLang
and refserver are tested the same way.
"""
