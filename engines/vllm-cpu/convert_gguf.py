"""Convert the SmolLM2 GGUF that refserver serves into a Hugging Face folder vLLM can load.

Run with the .venv-vllm interpreter (it has transformers, gguf and accelerate):
    .venv-vllm/bin/python engines/vllm-cpu/convert_gguf.py GGUF_FILE OUT_DIR

transformers dequantizes the GGUF (Q4_1) to float32 on load. Its GGUF loader marks the model as
quantized (`hf_quantizer`, `config.quantization_config`); both are cleared so the saved folder is
a plain float32 checkpoint, the same weights refserver computes with. The tokenizer and its chat
template come from the same GGUF, so both engines see the same prompt tokens.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

log = logging.getLogger("convert_gguf")


def convert(gguf_file: Path, out_dir: Path) -> None:
    started = time.monotonic()
    folder, name = str(gguf_file.parent), gguf_file.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if not tokenizer.chat_template:
        raise SystemExit(f"{gguf_file}: the GGUF has no chat template; the chat requests need one")
    log.info("wrote %s in %.0f s", out_dir, time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf_file", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not args.gguf_file.is_file():
        raise SystemExit(f"gguf_file {args.gguf_file}: no such file")
    convert(args.gguf_file, args.out_dir)


if __name__ == "__main__":
    main()
