"""Prompt tuning: learned input embeddings prepended to every sequence."""

from __future__ import annotations

from typing import Final, Literal, Self

from pydantic import Field, model_validator

from finetune_api.config.base import CamelModel
from finetune_api.config.methods._fields import VIRTUAL_TOKENS_HELP
from finetune_api.config.methods._registry import MethodEntry, register_method


class PromptSpec(CamelModel):
    """Prompt tuning: learned input embeddings prepended to every sequence
    (peft PromptTuningConfig)."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=1024, description=VIRTUAL_TOKENS_HELP)
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


PROMPT: Final = register_method(
    MethodEntry(
        name="prompt",
        options=PromptSpec,
        order=8,
        summary="prompt tuning",
        virtual_tokens=True,
    )
)
