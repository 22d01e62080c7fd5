"""Bottleneck adapters: the modules, where they go in a block, and their published format.

An adapter is ``up(act(down(dropout(x))))`` with ``up`` zero at init, so the adapted
model computes exactly what the base does until it trains. It joins a block through a
forward hook on a sublayer, which keeps every base module's path (and so checkpoints,
the planner's layer names and gradient checkpointing) unchanged:

- sequential (houlsby, pfeiffer): the sublayer's output ``h`` becomes ``h + adapter(h)``;
  houlsby on the attention and the feed-forward outputs, pfeiffer on the feed-forward's;
- parallel: the feed-forward's output becomes ``mlp(x) + scaling * adapter(x)``, from
  its input ``x``.

The adapters are children of their block (``bottleneck_attention``,
``bottleneck_mlp``), so they move, train, checkpoint and shard with it. The hooks are
the adapter's own bound methods, so a deep copy of the model hooks its copied adapters.

Blocks must have ``self_attn`` and ``mlp`` children (Llama, Mistral, Qwen2, Phi-3,
SmolLM2 ...); a model whose blocks do not (BERT, whose residual sits inside its output
sublayers; GPT-2's ``attn``) is refused by name rather than adapted somewhere else.

Published format (``save_bottleneck`` / ``load_bottleneck_adapter``): a directory with
``adapter_config.json`` (``"finetune_adapter": "bottleneck"``, the options, the width,
the base's shape and ``base_model_name_or_path``) and ``adapter_model.safetensors``
(the adapters' tensors by their path in the model, plus a classifier's head).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from finetune_api.config.methods.adapter import AdapterSpec
from finetune_trainer.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

FORMAT = "bottleneck"
"""``finetune_adapter`` in adapter_config.json: this module's format, not peft's."""
FORMAT_VERSION = 1
PEFT_TYPE = "BOTTLENECK"
"""``peft_type`` in adapter_config.json: no peft type, so tools that read it (vLLM's
check in finetune_api.serving, peft) see an adapter that is not LoRA rather than
taking a missing type for LoRA."""
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SITES = {"attention": ("self_attn", "bottleneck_attention"), "mlp": ("mlp", "bottleneck_mlp")}
"""Adapter site -> (the block's sublayer it hooks, the adapter's attribute on the block)."""
OPTIONS_ATTRIBUTE = "bottleneck_options"
"""Where :func:`attach` leaves the options on the model, for :func:`save_bottleneck`."""
HEAD_NAMES = ("score", "classifier")
"""A classifier's head, which trains (and is published) with the adapters."""
_PEFT_TASK = {"causal-lm": "CAUSAL_LM", "sequence-classification": "SEQ_CLS"}

_ACTIVATIONS: dict[str, Callable[[], torch.nn.Module]] = {
    "relu": torch.nn.ReLU,
    "gelu": torch.nn.GELU,
    "swish": torch.nn.SiLU,
}


class Bottleneck(torch.nn.Module):
    """``scaling * up(act(down(dropout(x))))``; ``up`` starts at zero."""

    def __init__(
        self, hidden: int, width: int, nonlinearity: str, dropout: float, scaling: float = 1.0
    ) -> None:
        super().__init__()
        self.down = torch.nn.Linear(hidden, width)
        self.act = _ACTIVATIONS[nonlinearity]()
        self.up = torch.nn.Linear(width, hidden)
        self.dropout = torch.nn.Dropout(dropout)
        self.scaling = scaling
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution (without the residual), in ``x``'s dtype."""
        inner = x.to(self.down.weight.dtype)
        out: torch.Tensor = self.up(self.act(self.down(self.dropout(inner))))
        return (out * self.scaling).to(x.dtype)

    def sequential_hook(self, module: torch.nn.Module, args: Any, output: Any) -> Any:
        """After a sublayer: ``h + adapter(h)`` on its hidden states (attention returns
        a tuple whose first item they are)."""
        if isinstance(output, tuple):
            return (output[0] + self(output[0]), *output[1:])
        return output + self(output)

    def parallel_hook(self, module: torch.nn.Module, args: Any, output: Any) -> Any:
        """Beside the feed-forward: its output plus the adapter of its input."""
        return output + self(args[0])


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's transformer blocks, each with ``self_attn`` and ``mlp``, or a
    ConfigError naming the model type."""
    from finetune_trainer.methods.freeze import transformer_blocks

    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    try:
        _, blocks = transformer_blocks(model)
    except ConfigError:
        blocks = torch.nn.ModuleList()
    if len(blocks) == 0 or not all(
        isinstance(getattr(b, "self_attn", None), torch.nn.Module)
        and isinstance(getattr(b, "mlp", None), torch.nn.Module)
        for b in blocks
    ):
        raise ConfigError(
            f"method.type adapter: the {kind} architecture ({type(model).__name__}) has no "
            "decoder blocks with self_attn and mlp sublayers, which bottleneck adapters hook "
            "(Llama, Mistral, Qwen2, Phi-3 and SmolLM2 have them); use method.type lora for "
            "this model"
        )
    return blocks


def attach(model: torch.nn.Module, options: AdapterSpec, hidden: int) -> list[Bottleneck]:
    """Add the adapters ``options`` describe to ``model``'s blocks, in place; returns them.

    Their parameters are the only new ones; the caller decides what trains."""
    blocks = decoder_blocks(model)
    if options.drop_layers >= len(blocks):
        raise ConfigError(
            f"method.adapter.dropLayers is {options.drop_layers} but {type(model).__name__} "
            f"has {len(blocks)} blocks, so no block would get an adapter; use at most "
            f"{len(blocks) - 1}"
        )
    width = options.width(hidden)
    scaling = options.output_scale()
    parallel = options.variant == "parallel"
    added: list[Bottleneck] = []
    for block in list(blocks)[options.drop_layers :]:
        reference = next(block.parameters())
        for site in options.sites():
            sublayer_name, attribute = SITES[site]
            adapter = Bottleneck(hidden, width, options.nonlinearity, options.dropout, scaling)
            adapter.to(device=reference.device)
            block.add_module(attribute, adapter)
            hook = adapter.parallel_hook if parallel else adapter.sequential_hook
            getattr(block, sublayer_name).register_forward_hook(hook)
            added.append(adapter)
    if options.drop_layers > 0:
        blocks[options.drop_layers].register_forward_pre_hook(_detach_input, with_kwargs=True)
    setattr(model, OPTIONS_ATTRIBUTE, options)
    return added


def _detach_input(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """AdapterDrop's saving, made certain: nothing below the lowest adapted block trains,
    so its input is cut from the graph. Without this, gradient checkpointing (which
    makes the embeddings' output require a gradient) would still run backward through
    the dropped blocks, for input gradients nobody uses."""
    if args:
        return (args[0].detach(), *args[1:]), kwargs
    if "hidden_states" in kwargs:
        kwargs = {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}
    return args, kwargs


def head_names(model: torch.nn.Module) -> list[str]:
    """A classifier's head modules by attribute name (none for a language model)."""
    return [n for n in HEAD_NAMES if isinstance(getattr(model, n, None), torch.nn.Module)]


def is_adapter_key(name: str) -> bool:
    """Whether a state-dict key belongs to a bottleneck adapter."""
    return any(f".{attribute}." in f".{name}" for _, attribute in SITES.values())


def save_bottleneck(
    model: torch.nn.Module, directory: Path, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """Write the documented directory: adapter_config.json and adapter_model.safetensors.

    The options are those :func:`attach` used; a classifier's head (a model with one is
    a classifier) is saved beside the adapters. ``state_dict`` (gathered from FSDP
    shards) replaces the model's own when given."""
    from safetensors.torch import save_file

    options = getattr(model, OPTIONS_ATTRIBUTE, None)
    if not isinstance(options, AdapterSpec):
        raise ModelError("method adapter: the model has no bottleneck adapters to publish")
    config = getattr(model, "config", None)
    hidden = int(getattr(config, "hidden_size", 0))
    heads = head_names(model)
    task = "sequence-classification" if heads else "causal-lm"
    weights = state_dict if state_dict is not None else model.state_dict()
    kept = {
        _plain(name): tensor.detach().cpu().contiguous()
        for name, tensor in weights.items()
        if is_adapter_key(_plain(name)) or _plain(name).split(".")[0] in heads
    }
    if not any(is_adapter_key(name) for name in kept):
        raise ModelError("method adapter: the model has no bottleneck adapters to publish")
    directory.mkdir(parents=True, exist_ok=True)
    save_file(kept, directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    written = {
        "finetune_adapter": FORMAT,
        "peft_type": PEFT_TYPE,
        "format_version": FORMAT_VERSION,
        "options": options.model_dump(mode="json", by_alias=True),
        "width": options.width(hidden),
        "hidden_size": hidden,
        "num_hidden_layers": int(getattr(config, "num_hidden_layers", 0)),
        "model_type": getattr(config, "model_type", None),
        "task_type": _PEFT_TASK.get(task, task),
        "modules_to_save": heads or None,
        "base_model_name_or_path": getattr(config, "name_or_path", None),
    }
    (directory / ADAPTER_CONFIG).write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")


def _plain(name: str) -> str:
    """A state-dict key without the prefixes wrappers add (FSDP, torch.compile)."""
    for prefix in ("_fsdp_wrapped_module.", "_orig_mod.", "module."):
        name = name.replace(prefix, "")
    return name


def is_bottleneck_adapter(directory: Path) -> bool:
    """Whether ``directory`` holds this module's format (not a peft adapter)."""
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        return False
    try:
        return bool(json.loads(path.read_text()).get("finetune_adapter") == FORMAT)
    except (OSError, ValueError, AttributeError):
        return False


def read_config(directory: Path) -> tuple[dict[str, Any], AdapterSpec]:
    """adapter_config.json and the options in it, or a ModelError saying what is wrong."""
    from pydantic import ValidationError

    path = directory / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
        if config.get("finetune_adapter") != FORMAT:
            raise ModelError(f"{path}: not a bottleneck adapter (no finetune_adapter: {FORMAT})")
        if int(config.get("format_version", 0)) > FORMAT_VERSION:
            raise ModelError(
                f"{path}: format_version {config['format_version']} is newer than this "
                f"trainer reads ({FORMAT_VERSION}); use a newer finetune"
            )
        return config, AdapterSpec.model_validate(config.get("options") or {})
    except (OSError, ValueError, ValidationError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"{path}: unreadable bottleneck adapter config ({exc})") from exc


def load_bottleneck_adapter(model: PreTrainedModel, directory: Path) -> PreTrainedModel:
    """``model`` (the base the adapter was trained on) with the published adapters of
    ``directory`` attached and loaded, in place; every tensor must fit."""
    from safetensors.torch import load_file

    config, options = read_config(directory)
    hidden = int(model.config.hidden_size)
    if config.get("hidden_size") not in (None, hidden):
        raise ModelError(
            f"{directory}: the adapter was trained on a model of hidden size "
            f"{config['hidden_size']}, this base has {hidden}; pass the base it was trained on"
        )
    attach(model, options, hidden)
    weights = load_file(directory / ADAPTER_WEIGHTS)
    own = model.state_dict()
    expected = {name for name in own if is_adapter_key(name)}
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise ModelError(
            f"{directory}: the adapter weights do not fit this base (missing "
            f"{missing[:3] or 'none'}, unexpected {unexpected[:3] or 'none'}); pass the base "
            "model it was trained on"
        )
    for name, tensor in weights.items():
        if own[name].shape != tensor.shape:
            raise ModelError(
                f"{directory}: {name} has shape {tuple(tensor.shape)}, the base's is "
                f"{tuple(own[name].shape)}; pass the base model it was trained on"
            )
    model.load_state_dict(weights, strict=False)
    return model
