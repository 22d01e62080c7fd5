"""Merging an adapter into its base model, one safetensors shard at a time.

``PeftModel.from_pretrained(base, adapter).merge_and_unload()`` holds the whole model
in memory (and ``save_pretrained`` a second copy of a shard while it writes); merging a
70B model that way needs a machine that can load it. Here each base shard is read
tensor by tensor with ``safe_open``, the adapter's change to each weight is applied,
the merged shard is written and freed before the next is read: peak memory is about
one shard plus the adapter, whatever the size of the model.

The change to a weight is what peft itself applies when it merges (``merge_and_unload``
is the reference the tests hold this to, within fp32 round-off):

- LoRA: ``W + scaling * B @ A`` (transposed for ``fan_in_fan_out``), ``scaling`` =
  ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA, per module with ``alpha_pattern``;
- DoRA: the LoRA sum, each output row rescaled to the learned magnitude;
- AdaLoRA: ``W + B @ (A * E) * alpha / r`` (``r`` the rank as saved);
- IA3: the weight (and a non-feedforward bias) times the learned scale vector;
- VeRA: ``W + (b * B) @ (d * A)``, with A and B the shared random matrices cut to the
  module's input and output sizes (published with the adapter: ``saveProjection``).

Prefix, prompt and p-tuning adapters are virtual tokens prepended to every sequence:
there is no weight to change, so they are refused, naming the method. Weights an
adapter replaces outright (``modules_to_save``, e.g. a classifier head) replace the
base's tensor. Anything else in an adapter file is refused rather than dropped: a merge
that silently loses part of the adapter would publish a different model.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from finetune_trainer.errors import ConfigError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SINGLE_SHARD = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
PEFT_PREFIX = "base_model.model."
VIRTUAL_TOKEN_TYPES = {
    "PREFIX_TUNING": "prefix",
    "PROMPT_TUNING": "prompt",
    "P_TUNING": "p-tuning",
}
"""peft types whose adapter is virtual tokens, by the spec's method name."""
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class MergeError(ConfigError):
    """The adapter cannot be merged into this base (the message says why and what to do)."""


@dataclass
class ModuleDelta:
    """What an adapter holds for one module of the base (``model.layers.0.mlp.up_proj``)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    """By the adapter's name for it: lora_A, lora_B, lora_E, lora_magnitude_vector, ia3_l."""


@dataclass
class Adapter:
    """A published PEFT adapter, read into memory (adapters are small), by base tensor."""

    peft_type: str
    config: dict[str, Any]
    modules: dict[str, ModuleDelta]
    """Module path (as in the base's state dict, without ``.weight``) to its tensors."""
    replacements: dict[str, torch.Tensor]
    """Base tensor name to the tensor that replaces it (modules_to_save)."""
    shared: dict[str, torch.Tensor] = field(default_factory=dict)
    """Tensors every module uses (VeRA's random matrices: vera_A, vera_B)."""

    def targets(self) -> set[str]:
        """The base tensors this adapter changes: a merge must find every one."""
        return {f"{m}.weight" for m in self.modules} | set(self.replacements)


_DELTA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_E|lora_magnitude_vector|ia3_l|vera_lambda_[bd])"
    r"(?:\.weight)?$"
)
_VERA_SHARED = {"base_model.vera_A": "vera_A", "base_model.vera_B": "vera_B"}
"""Where peft saves VeRA's shared matrices (``saveProjection``), by their part name."""


def read_adapter(directory: Path) -> Adapter:
    """The adapter published in ``directory``; MergeError for one that is no weights."""
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    if config.get("finetune_adapter") == "bottleneck":
        raise MergeError(
            "method adapter cannot be merged: a bottleneck adapter is a non-linear module "
            "(up(act(down(h)))), which no change to the base weights reproduces; load the "
            "base with the adapter instead (finetune generate, or load_bottleneck_adapter)"
        )
    peft_type = str(config.get("peft_type", ""))
    if peft_type in VIRTUAL_TOKEN_TYPES:
        method = VIRTUAL_TOKEN_TYPES[peft_type]
        raise MergeError(
            f"method {method} cannot be merged: its virtual tokens are not weights; serve "
            "the base model with the adapter instead (vLLM, PeftModel.from_pretrained)"
        )
    if peft_type not in ("LORA", "ADALORA", "IA3", "VERA"):
        raise MergeError(
            f"{directory / ADAPTER_CONFIG}: peft_type {peft_type or '(none)'} is not one this "
            "merge supports (LORA, ADALORA, IA3, VERA); serve the base model with the adapter"
        )
    if peft_type == "VERA" and not config.get("save_projection", True):
        raise MergeError(
            f"{directory / ADAPTER_CONFIG}: a VeRA adapter published without its random "
            "matrices (saveProjection: false) cannot be merged here: they are regenerated by "
            "peft's generator when it loads the adapter; load it with PeftModel, or train "
            "with method.vera.saveProjection: true"
        )
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise MergeError(
            f"{directory / ADAPTER_CONFIG}: the adapter trains biases, which this merge does "
            "not apply; serve the base model with the adapter"
        )
    modules: dict[str, ModuleDelta] = {}
    replacements: dict[str, torch.Tensor] = {}
    shared: dict[str, torch.Tensor] = {}
    for key, tensor in load_file(directory / ADAPTER_WEIGHTS).items():
        name = key.removeprefix(PEFT_PREFIX)
        if key in _VERA_SHARED:
            shared[_VERA_SHARED[key]] = tensor
        elif match := _DELTA_KEY.match(name):
            modules.setdefault(match["module"], ModuleDelta()).tensors[match["part"]] = tensor
        elif any(kind in name for kind in ("lora_", "ia3_", "vera_", "trainable_tokens")):
            raise MergeError(
                f"{directory / ADAPTER_WEIGHTS}: {key} is a kind of adapter weight this merge "
                "does not apply (e.g. a LoRA on an embedding); serve the base model with the "
                "adapter"
            )
        else:  # modules_to_save: the whole tensor, trained
            replacements[name] = tensor
    if peft_type == "VERA" and set(shared) != set(_VERA_SHARED.values()):
        raise MergeError(
            f"{directory / ADAPTER_WEIGHTS}: a VeRA adapter without its vera_A and vera_B "
            "matrices; load it with PeftModel instead"
        )
    return Adapter(peft_type, config, modules, replacements, shared)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's per-module override (``rank_pattern``, ``alpha_pattern``) for ``module``."""
    from peft.utils.other import get_pattern_key

    if not patterns:
        return default
    key = get_pattern_key(list(patterns), module)
    return patterns.get(key, default)


def merged_weight(weight: torch.Tensor, module: str, adapter: Adapter) -> torch.Tensor:
    """``weight`` (of ``module``) with the adapter's change applied, computed in fp32."""
    parts = adapter.modules[module].tensors
    w = weight.to(torch.float32)
    fan_in_fan_out = bool(adapter.config.get("fan_in_fan_out", False))
    if adapter.peft_type == "IA3":
        scale = parts["ia3_l"].to(torch.float32)
        return w * (scale.T if fan_in_fan_out else scale)
    if adapter.peft_type == "VERA":
        out_features, in_features = w.shape[::-1] if fan_in_fan_out else w.shape
        a = adapter.shared["vera_A"][:, :in_features].to(torch.float32)
        b = adapter.shared["vera_B"][:out_features, :].to(torch.float32)
        d = parts["vera_lambda_d"].to(torch.float32).unsqueeze(-1)
        scale_b = parts["vera_lambda_b"].to(torch.float32).unsqueeze(-1)
        delta = (scale_b * b) @ (d * a)
        return w + (delta.T if fan_in_fan_out else delta)
    a, b = parts["lora_A"].to(torch.float32), parts["lora_B"].to(torch.float32)
    if adapter.peft_type == "ADALORA":
        rank = a.shape[0]
        alpha = float(adapter.config.get("lora_alpha") or rank)
        delta = b @ (a * parts["lora_E"].to(torch.float32)) * alpha / (rank + 1e-5)
        return w + (delta.T if fan_in_fan_out else delta)
    rank = a.shape[0]
    alpha = float(_pattern_value(adapter.config.get("alpha_pattern") or {}, module, None) or 0)
    alpha = alpha or float(adapter.config["lora_alpha"])
    scaling = alpha / math.sqrt(rank) if adapter.config.get("use_rslora") else alpha / rank
    delta = b @ a
    delta = (delta.T if fan_in_fan_out else delta) * scaling
    if "lora_magnitude_vector" not in parts:
        return w + delta
    if fan_in_fan_out:
        raise MergeError(f"{module}: DoRA with fan_in_fan_out is not supported by this merge")
    combined = w + delta
    norm = torch.linalg.norm(combined, dim=1)
    magnitude = parts["lora_magnitude_vector"].to(torch.float32)
    rescaled: torch.Tensor = combined * (magnitude / norm).view(-1, 1)
    return rescaled


def merged_bias(bias: torch.Tensor, module: str, adapter: Adapter) -> torch.Tensor | None:
    """A non-feedforward IA3 module scales its output, bias included; None: unchanged."""
    parts = adapter.modules.get(module)
    if adapter.peft_type != "IA3" or parts is None:
        return None
    scale = parts.tensors["ia3_l"]
    if scale.shape[-1] != 1:  # feedforward: scales the input, not the output
        return None
    return (bias.to(torch.float32) * scale.reshape(bias.shape).to(torch.float32)).to(bias.dtype)


def base_shards(base_dir: Path) -> list[str]:
    """The base's safetensors files in order; MergeError when it has none."""
    index = base_dir / SHARD_INDEX
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return sorted(set(weight_map.values()))
    if (base_dir / SINGLE_SHARD).is_file():
        return [SINGLE_SHARD]
    raise MergeError(
        f"{base_dir}: no {SINGLE_SHARD} or {SHARD_INDEX}; the merge reads safetensors "
        "weights only (re-save the base with save_pretrained(safe_serialization=True))"
    )


_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_ST_NAMES = {dtype: name for name, dtype in _ST_DTYPES.items()}


def _merged_tensor(
    name: str, tensor: torch.Tensor, adapter: Adapter | None, applied: set[str]
) -> torch.Tensor:
    """``tensor`` (the base's ``name``) as the merged model has it."""
    if adapter is None:
        return tensor
    module, _, leaf = name.rpartition(".")
    out = tensor
    if name in adapter.replacements:
        out = adapter.replacements[name]
    elif leaf == "weight" and module in adapter.modules:
        out = merged_weight(tensor, module, adapter)
    elif leaf == "bias" and (scaled := merged_bias(tensor, module, adapter)) is not None:
        out = scaled
    if out is not tensor:
        applied.add(name)
    return out


def _merge_shard(
    src: Path, dst: Path, adapter: Adapter | None, dtype: torch.dtype | None, applied: set[str]
) -> dict[str, int]:
    """Merge one shard into ``dst``, streaming: the safetensors header is known from the
    source's (same names and shapes; the dtype converted), so each merged tensor is
    written as soon as it is computed and freed. safetensors' ``save_file`` would first
    hold the whole shard, then its serialization, in memory. Returns each tensor's size.
    """
    with safe_open(str(src), framework="pt") as shard:
        names = list(shard.keys())
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        targets: dict[str, torch.dtype] = {}
        offset = 0
        for name in names:
            piece = shard.get_slice(name)
            source = _ST_DTYPES[piece.get_dtype()]
            target = dtype if dtype is not None and source.is_floating_point else source
            size = math.prod(piece.get_shape()) * target.itemsize
            header[name] = {
                "dtype": _ST_NAMES[target],
                "shape": piece.get_shape(),
                "data_offsets": [offset, offset + size],
            }
            targets[name] = target
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        with dst.open("wb") as out:
            out.write(struct.pack("<Q", len(encoded)))
            out.write(encoded)
            for name in names:
                tensor = _merged_tensor(name, shard.get_tensor(name), adapter, applied)
                data = tensor.to(targets[name]).contiguous().reshape(-1).view(torch.uint8)
                out.write(data.numpy().data)
    return {
        name: header[name]["data_offsets"][1] - header[name]["data_offsets"][0] for name in names
    }


@dataclass(frozen=True)
class MergeReport:
    shards: list[str]
    tensors_changed: int
    total_size: int


def merge_shards(
    base_dir: Path,
    adapter: Adapter | None,
    out_dir: Path,
    dtype: str | None = None,
) -> MergeReport:
    """Write ``base_dir``'s weights with ``adapter`` merged (None: copy, converting the
    dtype) into ``out_dir``, shard by shard, under the base's own shard names.

    Only one tensor of the base is in memory at a time (with the pages of its shard the
    kernel has mapped). Every tensor the adapter changes
    must be found in the base: an adapter trained on another model is refused rather
    than half applied.
    """
    torch_dtype = DTYPES[dtype] if dtype is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = base_shards(base_dir)
    applied: set[str] = set()
    weight_map: dict[str, str] = {}
    total = 0
    for shard in shards:
        for name, size in _merge_shard(
            base_dir / shard, out_dir / shard, adapter, torch_dtype, applied
        ).items():
            weight_map[name] = shard
            total += size
    if adapter is not None:
        missing = adapter.targets() - applied
        if missing:
            raise MergeError(
                f"the adapter changes {len(missing)} tensor(s) the base model at {base_dir} "
                f"does not have (e.g. {sorted(missing)[0]}): it was trained on another base; "
                "name the right one"
            )
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / SHARD_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return MergeReport(shards, len(applied), total)
