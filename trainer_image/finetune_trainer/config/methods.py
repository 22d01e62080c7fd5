"""The ``method`` section: one typed options class per fine-tuning method.

Adding a method: its options class here, a field on :class:`MethodSpec` named after
the method, and a module in ``finetune_trainer.methods`` registering its behaviour.
"""

from __future__ import annotations

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

from finetune_trainer.config.base import CamelModel

# --------------------------------------------------------------------------- methods


def _one_error_for_target_modules(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One clear message instead of one per union member."""
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(
            "must be all-linear or a non-empty list of module names, e.g. [q_proj, v_proj]"
        ) from None


TargetModules = Annotated[
    Literal["all-linear"]
    | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)],
    WrapValidator(_one_error_for_target_modules),
]


class LoraSpec(CamelModel):
    """LoRA: low-rank adapters beside frozen weights."""

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the adapter matrices.")
    alpha: int = Field(
        default=32, ge=1, le=65536, description="Scaling numerator (scale = alpha/r)."
    )
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: TargetModules = Field(
        default="all-linear",
        description="Module names to adapt (e.g. [q_proj, v_proj]) or all-linear for every "
        "linear layer but the output head.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


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


MethodType = Literal["lora", "qlora"]


def _method_cel_rules(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """The CEL twin of `MethodSpec._section_matches_type`, one rule per section."""
    default = cls.model_fields["type"].default
    schema["x-kubernetes-validations"] = [
        {
            "rule": f"!has(self.{name}) || (has(self.type) ? self.type : '{default}') == '{name}'",
            "message": f"section '{name}' is set but type is not {name}",
        }
        for name in cls.model_fields
        if name != "type"
    ]


class MethodSpec(CamelModel):
    """The fine-tuning method: its type and, optionally, that method's own section."""

    model_config = CamelModel.model_config | ConfigDict(json_schema_extra=_method_cel_rules)

    type: MethodType = Field(default="lora", description="The fine-tuning method.")
    lora: LoraSpec | None = Field(default=None, description="Options for type lora.")
    qlora: QLoraSpec | None = Field(default=None, description="Options for type qlora.")

    @model_validator(mode="after")
    def _section_matches_type(self) -> Self:
        for name in type(self).section_names():
            if name != self.type and getattr(self, name) is not None:
                raise ValueError(
                    f"section '{name}' is set but type is '{self.type}'; set type: {name} "
                    f"or move the options under '{self.type}:'"
                )
        return self

    @classmethod
    def section_names(cls) -> list[str]:
        return [name for name in cls.model_fields if name != "type"]

    def options(self) -> LoraSpec:
        """The chosen method's options, defaults filled in when its section is absent."""
        section: LoraSpec | None = getattr(self, self.type)
        if section is None:
            spec_class = typing.get_args(type(self).model_fields[self.type].annotation)[0]
            section = spec_class()
        return section
