"""The ``method`` section: one typed options class per fine-tuning method.

Adding a method: its options class here, a field on :class:`MethodSpec` named after
the method (``-`` in the type becomes ``_`` in the field, so type ``p-tuning`` has the
section ``pTuning`` on the wire), and a module in ``finetune_trainer.methods``
registering its behaviour.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic.config import JsonDict

from finetune_api.config.base import CamelModel

# --------------------------------------------------------------------------- shared fields

_BARE_NAME = re.compile(r"[A-Za-z0-9_]+")


def _check_target_modules(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One clear message per mistake instead of one per union member."""
    if isinstance(value, str):
        if value == "all-linear":
            return value
        if _BARE_NAME.fullmatch(value):
            raise ValueError(
                f"a string is a regular expression that must match a whole module path (e.g. "
                f"model.layers.0.self_attn.q_proj), so '{value}' alone matches no layer; write "
                f"a list to select modules by name ([{value}]) or a regular expression such as "
                rf"'.*\.{value}'"
            )
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(
                f"'{value}' is not a valid regular expression ({exc}); write all-linear, a "
                "list of module names such as [q_proj, v_proj], or a valid regular expression"
            ) from None
        return value
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(
            "must be all-linear, a regular expression, or a non-empty list of module names, "
            "e.g. [q_proj, v_proj]"
        ) from None


TargetModules = Annotated[
    str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)],
    WrapValidator(_check_target_modules),
]
"""all-linear, a list of module names, or a regular expression over whole module paths."""

_TARGET_MODULES_HELP = (
    "a list of module names (e.g. [q_proj, v_proj]; a name matches the end of a module's "
    "path), all-linear (every linear layer but the output head), or any other string as a "
    r"regular expression that must match a module's whole path (e.g. '.*\.(q|v)_proj' or "
    r"'model\.layers\.1[0-9]\..*_proj')."
)
_PRESERVE: JsonDict = {"x-kubernetes-preserve-unknown-fields": True}
"""A string-or-list union has no structural schema; pydantic checks it instead."""

ModuleNames = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]

_VIRTUAL_TOKENS_HELP = (
    "Learned virtual tokens; each example's sequence grows by this many positions."
)

# --------------------------------------------------------------------------- lora family


class LoraSpec(CamelModel):
    """LoRA: low-rank adapters beside frozen weights."""

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the adapter matrices.")
    alpha: int = Field(
        default=32,
        ge=1,
        le=65536,
        description="Scaling numerator (scale = alpha/r; alpha/sqrt(r) with useRslora).",
    )
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: TargetModules = Field(
        default="all-linear",
        description="Which layers get adapters: " + _TARGET_MODULES_HELP,
        json_schema_extra=_PRESERVE,
    )
    use_dora: bool = Field(
        default=False,
        description="DoRA: split each adapted weight into magnitude and direction; adds one "
        "trainable magnitude per output feature of every adapted layer. Slower steps, often "
        "better at low ranks.",
    )
    use_rslora: bool = Field(
        default=False,
        description="rsLoRA: scale the adapter by alpha/sqrt(r) instead of alpha/r, which keeps "
        "high ranks learning.",
    )
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        default="default",
        description="How the adapters start. default: A random (Kaiming), B zero, so training "
        "starts from the base model; gaussian: A Gaussian, B zero; pissa: A and B from the "
        "top singular vectors of each weight (the base keeps the residual); olora: from a QR "
        "decomposition of each weight (the base keeps the residual). pissa and olora change "
        "the base weights while training; the published adapter is converted (rank 2r) to "
        "apply to the original base model.",
    )
    modules_to_save: ModuleNames | None = Field(
        default=None,
        description="Modules trained in full and published with the adapter, e.g. [lm_head] "
        "or [embed_tokens] (names as in targetModules lists).",
    )
    lora_plus_ratio: float | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="LoRA+: the B matrices learn at learningRate x this ratio, the A matrices "
        "(and DoRA magnitudes) at learningRate; the LoRA+ paper suggests 16. Unset: one rate.",
    )

    @model_validator(mode="after")
    def _init_fits_the_options(self) -> Self:
        if self.init in ("pissa", "olora") and self.use_dora:
            raise ValueError(
                f"init {self.init} cannot be combined with useDora: the published adapter is "
                f"converted to plain LoRA over the original base, which DoRA's magnitudes do "
                f"not survive; set useDora: false or init: default"
            )
        return self


class QLoraSpec(LoraSpec):
    """QLoRA: LoRA on a 4-bit quantized base model (bitsandbytes)."""

    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(
        default=True, description="Quantize the quantization constants too (saves ~0.4 bit/param)."
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Dtype of the de-quantized matmuls. auto: bfloat16 on GPUs that support "
        "it, float32 on CPU.",
    )

    @model_validator(mode="after")
    def _init_keeps_the_4bit_base(self) -> Self:
        if self.init in ("pissa", "olora"):
            raise ValueError(
                f"init {self.init} rewrites the base weights, which a 4-bit base can only hold "
                f"re-quantized, so the published adapter would not reproduce the trained model; "
                f"use init: default or gaussian with qlora, or type: lora for init {self.init}"
            )
        return self


class AdaLoraSpec(CamelModel):
    """AdaLoRA: LoRA in SVD form whose rank budget is reallocated across layers by
    importance while training (peft AdaLoraConfig)."""

    init_r: int = Field(
        default=12, ge=1, le=1024, description="Rank every adapted layer starts with."
    )
    target_r: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Average rank per layer after pruning: the total budget is targetR x the "
        "number of adapted layers, shared out by importance. Must be below initR.",
    )
    alpha: int = Field(
        default=32, ge=1, le=65536, description="Scaling numerator (scale = alpha/initR)."
    )
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: TargetModules = Field(
        default="all-linear",
        description="Which layers get adapters: " + _TARGET_MODULES_HELP,
        json_schema_extra=_PRESERVE,
    )
    tinit: int = Field(
        default=0,
        ge=0,
        description="Warm-up steps at the full initR before pruning starts.",
    )
    tfinal: int = Field(
        default=0,
        ge=0,
        description="Final steps that train at the final rank allocation. tinit + tfinal must "
        "leave at least one step of the run for pruning.",
    )
    delta_t: int = Field(default=1, ge=1, description="Steps between two budget reallocations.")
    beta1: float = Field(
        default=0.85, gt=0, lt=1, description="EMA factor of the importance (sensitivity) scores."
    )
    beta2: float = Field(
        default=0.85, gt=0, lt=1, description="EMA factor of the importance uncertainty."
    )
    orth_reg_weight: float = Field(
        default=0.5,
        gt=0,
        le=100,
        description="Weight of the orthogonality penalty on P and Q added to the training loss.",
    )

    @model_validator(mode="after")
    def _budget_shrinks(self) -> Self:
        if self.target_r >= self.init_r:
            raise ValueError(
                f"targetR ({self.target_r}) must be below initR ({self.init_r}): AdaLoRA prunes "
                f"from initR down to targetR; lower targetR or raise initR"
            )
        return self


class IA3Spec(CamelModel):
    """IA3: learned vectors that rescale activations of chosen layers (peft IA3Config)."""

    target_modules: TargetModules | None = Field(
        default=None,
        description="Layers whose activations are rescaled: "
        + _TARGET_MODULES_HELP
        + " Unset: peft's choice for the architecture (Llama: k_proj, v_proj, down_proj).",
        json_schema_extra=_PRESERVE,
    )
    feedforward_modules: TargetModules | None = Field(
        default=None,
        description="Which of targetModules are feed-forward layers (their input is rescaled, "
        "not their output); same forms as targetModules, and a list must be part of a "
        "targetModules list. Unset: peft's choice for the architecture (Llama: down_proj).",
        json_schema_extra=_PRESERVE,
    )
    modules_to_save: ModuleNames | None = Field(
        default=None,
        description="Modules trained in full and published with the adapter, e.g. [lm_head].",
    )

    @model_validator(mode="after")
    def _feedforward_within_targets(self) -> Self:
        ff, targets = self.feedforward_modules, self.target_modules
        if ff is not None and targets is None:
            raise ValueError(
                "feedforwardModules is set but targetModules is not; set targetModules too "
                "(feedforwardModules names which of them are feed-forward layers)"
            )
        if isinstance(ff, list) and isinstance(targets, list):
            outside = [name for name in ff if name not in targets]
            if outside:
                raise ValueError(
                    f"feedforwardModules {outside} are not in targetModules {targets}; add them "
                    "to targetModules or remove them from feedforwardModules"
                )
        return self


# --------------------------------------------------------------------------- full weights


class FullSpec(CamelModel):
    """Full fine-tuning: every parameter trains; the whole model is published."""


class FreezeSpec(CamelModel):
    """Partial fine-tuning: the top transformer blocks, the head and the final norm train;
    everything below stays frozen. The whole model is published."""

    trainable_layers: int = Field(
        default=2,
        ge=0,
        le=1024,
        description="How many of the top (last) transformer blocks train, besides the head "
        "(lm_head, or the classifier) and the final norm. At most the model's block count.",
    )
    train_bias_only: bool = Field(
        default=False,
        description="BitFit: of those modules only the bias terms train. Models without bias "
        "terms there (Llama, SmolLM2, Mistral) are refused with an error rather than "
        "training something else; Qwen2-style attention biases or GPT-2-style models have "
        "them.",
    )
    head_lr_multiplier: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="The head learns at learningRate x this (e.g. 10 for a fresh classifier); "
        "the blocks and the norm at learningRate.",
    )


# --------------------------------------------------------------------------- prompt learning


class PrefixSpec(CamelModel):
    """Prefix tuning: learned key/value prefixes in every attention layer
    (peft PrefixTuningConfig)."""

    num_virtual_tokens: int = Field(
        default=20,
        ge=1,
        le=1024,
        description="Learned prefix positions that every attention layer's keys and values "
        "start with.",
    )
    projection: bool = Field(
        default=False,
        description="Reparameterise the prefixes through a two-layer MLP while training (more "
        "parameters, often steadier); off: the prefixes are trained directly.",
    )
    encoder_hidden_size: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Hidden size of the projection MLP (projection only). Default: the "
        "model's hidden size.",
    )

    @model_validator(mode="after")
    def _hidden_size_needs_projection(self) -> Self:
        if self.encoder_hidden_size is not None and not self.projection:
            raise ValueError(
                "encoderHiddenSize is only used with projection: true; set projection: true or "
                "remove encoderHiddenSize"
            )
        return self


class PromptSpec(CamelModel):
    """Prompt tuning: learned input embeddings prepended to every sequence
    (peft PromptTuningConfig)."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=1024, description=_VIRTUAL_TOKENS_HELP)
    init: Literal["random", "text"] = Field(
        default="random",
        description="random: random embeddings; text: the embeddings of initText's tokens, "
        "repeated or cut to numVirtualTokens.",
    )
    init_text: str | None = Field(
        default=None,
        min_length=1,
        description="The text whose token embeddings start the prompt (init: text only), e.g. "
        "'Answer with the date in ISO 8601 form'.",
    )

    @model_validator(mode="after")
    def _text_goes_with_text_init(self) -> Self:
        if self.init == "text" and self.init_text is None:
            raise ValueError("init is text but initText is not set; set initText or init: random")
        if self.init == "random" and self.init_text is not None:
            raise ValueError(
                "initText is only used with init: text; set init: text or remove initText"
            )
        return self


class PTuningSpec(CamelModel):
    """P-tuning: virtual-token embeddings produced by a small prompt encoder
    (peft PromptEncoderConfig)."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=1024, description=_VIRTUAL_TOKENS_HELP)
    encoder: Literal["mlp", "lstm"] = Field(
        default="mlp",
        description="The prompt encoder: mlp (two hidden layers) or lstm (a bidirectional "
        "LSTM followed by an MLP).",
    )
    encoder_hidden_size: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Hidden size of the prompt encoder. Default: the model's hidden size.",
    )
    encoder_num_layers: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="LSTM layers (encoder: lstm only). Default: 2.",
    )
    encoder_dropout: float = Field(
        default=0.0, ge=0, lt=1, description="Dropout inside the prompt encoder."
    )

    @model_validator(mode="after")
    def _layers_need_lstm(self) -> Self:
        if self.encoder_num_layers is not None and self.encoder != "lstm":
            raise ValueError(
                "encoderNumLayers is only used with encoder: lstm (the mlp encoder always has "
                "two hidden layers); set encoder: lstm or remove encoderNumLayers"
            )
        return self


# --------------------------------------------------------------------------- the section

MethodType = Literal[
    "lora", "qlora", "adalora", "ia3", "full", "freeze", "prefix", "prompt", "p-tuning"
]
PROMPT_LEARNING_METHODS: frozenset[str] = frozenset({"prefix", "prompt", "p-tuning"})
"""Methods that add virtual tokens to every sequence (no room for them in packed rows)."""

MethodOptions = (
    LoraSpec | AdaLoraSpec | IA3Spec | FullSpec | FreezeSpec | PrefixSpec | PromptSpec | PTuningSpec
)
"""What :meth:`MethodSpec.options` returns (QLoraSpec is a LoraSpec)."""


def section_field(method_type: str) -> str:
    """The MethodSpec field holding a type's options: ``p-tuning`` -> ``p_tuning``."""
    return method_type.replace("-", "_")


def _wire_sections(cls: type[BaseModel]) -> dict[str, str]:
    """{method type: wire name of its section}, e.g. {'p-tuning': 'pTuning'}."""
    fields = {t: section_field(t) for t in typing.get_args(MethodType)}
    return {t: cls.model_fields[name].alias or name for t, name in fields.items()}


def _method_cel_rules(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """The CEL twin of `MethodSpec._section_matches_type`, one rule per section."""
    default = cls.model_fields["type"].default
    schema["x-kubernetes-validations"] = [
        {
            "rule": f"!has(self.{wire}) || (has(self.type) ? self.type : '{default}') == "
            f"'{method_type}'",
            "message": f"section '{wire}' is set but type is not {method_type}",
        }
        for method_type, wire in _wire_sections(cls).items()
    ]


class MethodSpec(CamelModel):
    """The fine-tuning method: its type and, optionally, that method's own section."""

    model_config = CamelModel.model_config | ConfigDict(json_schema_extra=_method_cel_rules)

    type: MethodType = Field(
        default="lora",
        description="The fine-tuning method. Adapters (published as a PEFT adapter): lora, "
        "qlora (LoRA on a 4-bit base), adalora (rank reallocated while training), ia3 "
        "(activation scaling), prefix (prefix tuning), prompt (prompt tuning), p-tuning "
        "(prompt encoder). Whole model (published as a model): full (every weight "
        "trains), freeze (the top blocks and the head train).",
    )
    lora: LoraSpec | None = Field(default=None, description="Options for type lora.")
    qlora: QLoraSpec | None = Field(default=None, description="Options for type qlora.")
    adalora: AdaLoraSpec | None = Field(default=None, description="Options for type adalora.")
    ia3: IA3Spec | None = Field(default=None, description="Options for type ia3.")
    full: FullSpec | None = Field(
        default=None, description="Options for type full (none yet; {} is accepted)."
    )
    freeze: FreezeSpec | None = Field(default=None, description="Options for type freeze.")
    prefix: PrefixSpec | None = Field(default=None, description="Options for type prefix.")
    prompt: PromptSpec | None = Field(default=None, description="Options for type prompt.")
    p_tuning: PTuningSpec | None = Field(default=None, description="Options for type p-tuning.")

    @model_validator(mode="after")
    def _section_matches_type(self) -> Self:
        wire = _wire_sections(type(self))
        for method_type, section in wire.items():
            if method_type != self.type and getattr(self, section_field(method_type)) is not None:
                raise ValueError(
                    f"section '{section}' is set but type is '{self.type}'; set type: "
                    f"{method_type} or move the options under '{wire[self.type]}:'"
                )
        return self

    @classmethod
    def section_names(cls) -> list[str]:
        """Wire names of the method sections, in declaration order."""
        return [info.alias or name for name, info in cls.model_fields.items() if name != "type"]

    def options(self) -> MethodOptions:
        """The chosen method's options, defaults filled in when its section is absent."""
        name = section_field(self.type)
        section: MethodOptions | None = getattr(self, name)
        if section is None:
            spec_class = typing.get_args(type(self).model_fields[name].annotation)[0]
            section = spec_class()
        return section
