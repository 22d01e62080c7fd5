"""Choosing the device and precision, and loading the tokenizer and the base model.

CUDA is used whenever it is present; the CPU otherwise. ``training.precision: auto``
means bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU, the usual best
choice for each; explicit choices the hardware cannot honour fail with the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from finetune_trainer.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
    from transformers.utils.quantization_config import QuantizationConfigMixin

    from finetune_trainer.data.labels import LabelVocabulary

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


@dataclass(frozen=True)
class Compute:
    """Where and in which precision a run computes."""

    device: torch.device
    precision: str
    """fp32, bf16 or fp16: the resolved ``training.precision``."""

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    @property
    def mixed_precision(self) -> str:
        """The value accelerate's ``mixed_precision`` expects."""
        return _MIXED[self.precision]


def resolve_compute(precision: str, device: torch.device | None = None) -> Compute:
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if precision == "auto" and not cuda:
        precision = "fp32"
    elif precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not cuda:
        raise ConfigError(
            "training.precision: fp16 needs a CUDA GPU; use fp32 or bf16 on CPU, or auto"
        )
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("training.precision: this GPU does not support bf16; use fp16 or auto")
    return Compute(device, precision)


def load_tokenizer(model_dir: Path, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer from {model_dir}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"{model_dir}: the tokenizer has no fast (Rust) version; the label mask needs "
            "character offsets, which only fast tokenizers give"
        )
    if tokenizer.pad_token_id is None:
        # Padding is always masked out by the attention mask and IGNORE_INDEX labels,
        # so reusing EOS is safe and keeps the vocabulary (and the head) unchanged.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    model_dir: Path,
    compute: Compute,
    *,
    trust_remote_code: bool,
    quantization: QuantizationConfigMixin | None = None,
    dropout: float | None = None,
    task: str = "causal-lm",
    labels: LabelVocabulary | None = None,
    pad_token_id: int | None = None,
) -> PreTrainedModel:
    """The base model for ``task`` on ``compute.device`` in its training dtype (or
    quantized).

    ``dropout`` overrides every dropout probability the model's config declares. For
    classification, ``labels`` (a LabelVocabulary) sizes the new head and names its
    outputs; a reward model has one output; ``pad_token_id`` lets decoder classifiers
    (and reward models) find each row's last real token.
    """
    from transformers import AutoConfig

    from finetune_trainer.tasks import auto_model_class

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if labels is not None:
        kwargs.update(num_labels=len(labels), id2label=labels.id2label, label2id=labels.label2id)
    if task == "reward-model":
        # One output: the score (a Bradley-Terry reward), read at each row's last token.
        kwargs["num_labels"] = 1
    if pad_token_id is not None and task in ("sequence-classification", "reward-model"):
        kwargs["pad_token_id"] = pad_token_id
    if dropout is not None:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        kwargs.update(dropout_overrides(config, dropout))
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": compute.device}
        kwargs["dtype"] = torch.float32 if compute.precision == "fp32" else compute.dtype
    else:
        # Mixed precision keeps frozen weights in the low-precision dtype (half the
        # memory) while trainable adapters stay fp32 (peft's autocast_adapter_dtype).
        # fp16 keeps fp32 master weights (autocast computes in fp16, the scaler guards
        # the gradients): fp16 *parameters* cannot be unscaled by the GradScaler.
        kwargs["dtype"] = torch.float32 if compute.precision == "fp16" else compute.dtype
    try:
        model: PreTrainedModel = auto_model_class(task).from_pretrained(model_dir, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load the model from {model_dir}: {exc}") from exc
    if quantization is None:
        # PreTrainedModel.to is decorated with functools.wraps(torch.nn.Module.to), which
        # typeshed types as the unbound function: mypy wants the model passed again.
        model.to(compute.device)  # type: ignore[arg-type]
    else:
        keep_4bit_layers_trainable(model)
    return model


def keep_4bit_layers_trainable(model: torch.nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, a 4-bit layer's first forward in eval mode without grad
    (the evaluation before training) repacks its weights for a faster kernel that has no
    backward; training afterwards silently drops the gradient through every frozen
    layer, so only adapters near the output learn. Evaluating in the training layout
    costs some speed and keeps evaluation and training on the same weights.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            # torch types Module.__setattr__'s value as Tensor | Module; at run time any
            # value is set as a plain attribute, as this bitsandbytes flag (a bool) is.
            module.support_avx512bf16_for_cpu = False  # type: ignore[assignment]


DROPOUT_ATTRIBUTES = (
    "attention_dropout",
    "hidden_dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "mlp_dropout",
)


def dropout_overrides(config: PretrainedConfig, probability: float) -> dict[str, float]:
    """The config keyword arguments that set every dropout the model declares."""
    return {name: probability for name in DROPOUT_ATTRIBUTES if hasattr(config, name)}


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in backward; inputs need grads so frozen embeddings still
    pass gradients to adapters behind them.

    ``model`` is what a method returns: a transformers model, or PEFT's wrapper of one.
    """
    wrapped = cast("PreTrainedModel | PeftModel", model)
    wrapped.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(wrapped, "enable_input_require_grads"):
        wrapped.enable_input_require_grads()
    if hasattr(wrapped, "config"):
        wrapped.config.use_cache = False


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as their real size."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
