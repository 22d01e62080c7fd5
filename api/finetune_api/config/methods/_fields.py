"""Field types and help texts that several methods' options share."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic.config import JsonDict

from finetune_api.config.patterns import check_module_pattern

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
        check_module_pattern(value)  # invalid, or one that could hang the matcher
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

TARGET_MODULES_HELP = (
    "a list of module names (e.g. [q_proj, v_proj]; a name matches the end of a module's "
    "path), all-linear (every linear layer but the output head), or any other string as a "
    r"regular expression that must match a module's whole path (e.g. '.*\.(q|v)_proj' or "
    r"'model\.layers\.1[0-9]\..*_proj')."
)
PRESERVE: JsonDict = {"x-kubernetes-preserve-unknown-fields": True}
"""A string-or-list union has no structural schema; pydantic checks it instead."""

MODULE_NAME = r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$"
"""A module's name or dotted path (lm_head, model.embed_tokens): peft writes each
modulesToSave entry into a regular expression, so anything else could hang it."""
ModuleNames = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=256, pattern=MODULE_NAME)]],
    Field(min_length=1),
]

VIRTUAL_TOKENS_HELP = (
    "Learned virtual tokens; each example's sequence grows by this many positions."
)
