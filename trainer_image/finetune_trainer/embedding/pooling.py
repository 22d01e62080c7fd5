"""Sentence vectors from an encoder's token vectors: mean or CLS pooling.

A sentence-transformers model directory says how it pools (``modules.json`` names a
``Pooling`` module whose ``config.json`` sets ``pooling_mode_*``); fine-tuning it with
another pooling would train (and publish) a different model than the one named, so that
pooling is the default and ``contrastive.pooling`` overrides it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch

from finetune_trainer.errors import ConfigError

PoolingMode = Literal["mean", "cls"]

_MODES: dict[str, PoolingMode] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
}


def model_pooling(model_dir: Path) -> PoolingMode | None:
    """The pooling a sentence-transformers directory declares (None: not one, or no
    Pooling module); one this trainer cannot reproduce (max, weighted mean...) is an
    error naming the setting that overrides it."""
    modules = model_dir / "modules.json"
    if not modules.is_file():
        return None
    entries = json.loads(modules.read_text())
    pooling = next((m for m in entries if str(m.get("type", "")).endswith("Pooling")), None)
    if pooling is None:
        return None
    config = json.loads((model_dir / str(pooling.get("path", "")) / "config.json").read_text())
    chosen = [mode for key, mode in _MODES.items() if config.get(key)]
    others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v]
    if len(chosen) != 1 or len(others) != 1:
        raise ConfigError(
            f"model.uri: the model's sentence-transformers pooling ({', '.join(others) or 'none'}) "
            "is not mean or cls alone; set contrastive.pooling: mean or cls"
        )
    return chosen[0]


def resolve_pooling(configured: PoolingMode | None, model_dir: Path) -> PoolingMode:
    """``contrastive.pooling``, else the model's own, else mean."""
    if configured is not None:
        return configured
    return model_pooling(model_dir) or "mean"


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: PoolingMode) -> torch.Tensor:
    """One vector per row of ``hidden`` [B, T, H]: the first token's (cls), or the mean
    over the tokens ``mask`` marks as real (padding never counts)."""
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def encode(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, mode: PoolingMode
) -> torch.Tensor:
    """The sentence vectors (fp32) of a padded batch through the encoder (a PEFT
    feature-extraction model or a bare ``AutoModel``)."""
    out = model(input_ids=ids, attention_mask=mask)
    return pool(out.last_hidden_state.float(), mask, mode)
