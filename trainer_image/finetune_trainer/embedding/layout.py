"""The published set of a sentence-embedding run in the sentence-transformers layout.

Beside the weights (a whole model for full and freeze, a PEFT adapter for lora) and the
tokenizer, the set holds what sentence-transformers reads to rebuild the encoder:
``modules.json`` (Transformer, then Pooling, then Normalize when
``contrastive.normalize``), ``1_Pooling/config.json`` (the pooling the run trained
with) and ``sentence_bert_config.json`` (the maximum sequence length). So
``SentenceTransformer(path)`` loads a whole-model set as it is, and
:func:`read_layout` tells this trainer's own loader (``finetune verify``, tests) how to
embed with either kind of set. The ``2_Normalize`` module has no files (it has no
weights), as in the sentence-transformers models on the Hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from finetune_trainer.embedding.pooling import PoolingMode, model_pooling, pool

MODULES = "modules.json"
POOLING_DIR = "1_Pooling"
LAYOUT_FILES = (MODULES, f"{POOLING_DIR}/config.json", "sentence_bert_config.json")
"""What :func:`write_layout` writes: what a merged or exported copy carries along."""
_ST = "sentence_transformers.models"


@dataclass(frozen=True)
class Layout:
    """How a published encoder turns a text into its vector."""

    pooling: PoolingMode
    normalize: bool


def write_layout(
    directory: Path, layout: Layout, dimension: int, max_seq_length: int
) -> list[Path]:
    """Write the sentence-transformers files into ``directory``; the files written."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": f"{_ST}.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": f"{_ST}.Pooling"},
    ]
    if layout.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": f"{_ST}.Normalize"})
    pooling = {
        "word_embedding_dimension": dimension,
        "pooling_mode_cls_token": layout.pooling == "cls",
        "pooling_mode_mean_tokens": layout.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    files = {
        directory / MODULES: modules,
        directory / POOLING_DIR / "config.json": pooling,
        directory / "sentence_bert_config.json": {
            "max_seq_length": max_seq_length,
            "do_lower_case": False,
        },
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n")
    return list(files)


def read_layout(directory: Path) -> Layout | None:
    """The layout of a published (or any sentence-transformers) directory; None when
    it has no ``modules.json``."""
    pooling = model_pooling(directory)
    if pooling is None:
        return None
    entries = json.loads((directory / MODULES).read_text())
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in entries)
    return Layout(pooling, normalize)


@torch.no_grad()
def embed(
    model: torch.nn.Module,
    tokenizer: object,
    texts: list[str],
    layout: Layout,
    *,
    max_length: int = 256,
) -> torch.Tensor:
    """[N, H]: ``texts`` as the published encoder embeds them (as sentence-transformers
    would: pooled, normalised when the layout says so)."""
    device = next(model.parameters()).device
    encoded = tokenizer(  # type: ignore[operator]
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
    vectors = pool(
        model(input_ids=ids, attention_mask=mask).last_hidden_state.float(), mask, layout.pooling
    )
    return F.normalize(vectors, dim=-1) if layout.normalize else vectors
