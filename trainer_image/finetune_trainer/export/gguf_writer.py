"""GGUF for llama.cpp and Ollama, written with the ``gguf`` library (llama.cpp's own).

The ``gguf`` package writes the file format and knows each architecture's tensor names
(``TensorNameMap``), but the conversion of a Hugging Face checkpoint (llama.cpp's
``convert_hf_to_gguf.py``) is not packaged. This module does that conversion for the
architectures it has been checked on, llama only (SmolLM2, Llama 2/3, TinyLlama and the
like); any other architecture is refused naming it, rather than written wrong.

Two conventions of llama.cpp matter for llama: the q and k projection rows are
permuted (llama.cpp applies rotary embeddings to interleaved pairs, Hugging Face to
halves; ``scripts/prepare_smollm2.py`` goes the other way through transformers'
GGUF loader), and the tokenizer travels inside the file: the BPE tokens, their types,
merges, special token ids and chat template.

Tensors are written in the merged model's dtype (float32, float16; bfloat16 as
GGUF's BF16); quantizing further is llama.cpp's ``llama-quantize``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from finetune_trainer.export.merge import MergeError, base_shards

GGUF_FILE = "model.gguf"
SUPPORTED = {"llama": "LLAMA"}
"""Hugging Face model_type to gguf's MODEL_ARCH member, for what this module converts."""


def permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's row order for a q (or k, with the kv heads) projection."""
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _config(model_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        raise MergeError(
            f"--format gguf: architecture {model_type} is not supported (this export "
            f"converts {', '.join(SUPPORTED)}); export safetensors and convert it with "
            "llama.cpp's convert_hf_to_gguf.py"
        )
    return config


def _rope_theta(config: dict[str, Any]) -> float:
    rope = config.get("rope_parameters") or {}
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def _tensor_array(tensor: torch.Tensor) -> tuple[np.ndarray[Any, Any], Any]:
    """The array the writer takes, and its raw GGML type for bfloat16 (numpy has none)."""
    import gguf

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy(), gguf.GGMLQuantizationType.BF16
    if tensor.dtype not in (torch.float32, torch.float16):
        tensor = tensor.to(torch.float32)
    return tensor.numpy(), None


def _add_tokenizer(writer: Any, tokenizer_dir: Path, vocab_size: int) -> None:
    """The tokenizer as llama.cpp reads it: a GPT-2 style BPE vocabulary and merges."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special
    }
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:  # the embedding is padded beyond the tokenizer
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    pre = json.dumps(
        json.loads((tokenizer_dir / "tokenizer.json").read_text()).get("pre_tokenizer")
    )
    # llama.cpp's name for the pre-tokenizer: SmolLM's splits digits one by one.
    writer.add_tokenizer_pre("smollm" if '"individual_digits": true' in pre else "gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special_vocab = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=vocab_size)
    special_vocab.add_to_gguf(writer)


def write_gguf(
    weights_dir: Path, config_dir: Path, tokenizer_dir: Path, out: Path, dtype: str | None
) -> Path:
    """``out/model.gguf`` from the (merged) safetensors in ``weights_dir``, one tensor at a
    time; ``config_dir`` holds the model's config.json."""
    import gguf

    config = _config(config_dir)
    arch = gguf.MODEL_ARCH[SUPPORTED[config["model_type"]]]
    n_layers, n_head = config["num_hidden_layers"], config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    names = gguf.get_tensor_name_map(arch, n_layers)
    out.mkdir(parents=True, exist_ok=True)
    path = out / GGUF_FILE
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    file_type = {
        "float16": gguf.LlamaFileType.MOSTLY_F16,
        "bfloat16": gguf.LlamaFileType.MOSTLY_BF16,
    }
    writer.add_file_type(file_type.get(dtype or "", gguf.LlamaFileType.ALL_F32))
    _add_tokenizer(writer, tokenizer_dir, config["vocab_size"])
    for shard in base_shards(weights_dir):
        with safe_open(str(weights_dir / shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = f.get_tensor(name)
                target = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if target is None:
                    if name.endswith("rotary_emb.inv_freq"):
                        continue
                    raise MergeError(f"--format gguf: no GGUF name for tensor {name}")
                if name.endswith("q_proj.weight"):
                    tensor = permute(tensor, n_head)
                elif name.endswith("k_proj.weight"):
                    tensor = permute(tensor, n_kv)
                if tensor.ndim == 1:  # norms: llama.cpp keeps them in float32
                    tensor = tensor.to(torch.float32)
                array, raw = _tensor_array(tensor.contiguous())
                writer.add_tensor(target, array, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
