"""The contract's method registry: one :class:`MethodEntry` per ``method.type``.

An entry pairs a method's name with its options model and the facts that every side
needs without running it: where it is listed, what it publishes, whether it adds
virtual tokens, whether it trains on a quantised base, and which method it builds on.
The implementation is the trainer's (``finetune_trainer.methods``), registered there
against the entry, so the contract never imports torch or peft.

Entries register when their module is imported; ``finetune_api.config.methods``
imports every module of the package, then closes the registry and derives MethodSpec
from it. A registration after that would not be in MethodSpec, so it is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar

from pydantic.alias_generators import to_camel

from finetune_api.config.base import CamelModel

OptionsT = TypeVar("OptionsT", bound=CamelModel)
"""A method's options model."""

Artifact = Literal["adapter", "model"]

_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


@dataclass(frozen=True, kw_only=True, eq=False)
class MethodEntry(Generic[OptionsT]):
    """One fine-tuning method as the contract knows it."""

    name: str
    """The ``method.type`` value, e.g. ``p-tuning``."""
    options: type[OptionsT]
    """The model of its section (``method.<field>``); every field has a default."""
    order: int
    """Where it is listed: the type's enum, the sections of the CRD and the field
    reference. A listed number never changes (the CRD's order follows it); a new method
    takes the next free one."""
    summary: str | None = None
    """A few words for the ``type`` field's description; None where the name says it."""
    artifact: Artifact = "adapter"
    """adapter: a PEFT adapter over the base model; model: the whole model."""
    virtual_tokens: bool = False
    """It adds learned virtual tokens to every sequence (prompt learning), so packed
    rows have no room for them."""
    quantized_base: bool = False
    """It trains on a quantised base model (the trainer's implementation says how to
    load it)."""
    builds_on: MethodEntry[Any] | None = None
    """The method this one extends (QLoRA: LoRA). Its options model extends that
    method's, and that method's section may carry the options the two share; see
    ``finetune_api.config.methods``."""

    @property
    def field(self) -> str:
        """The MethodSpec field of its section: ``-`` becomes ``_`` (``p_tuning``)."""
        return self.name.replace("-", "_")

    @property
    def section(self) -> str:
        """The wire name of its section (``pTuning``)."""
        return to_camel(self.field)

    def shared_fields(self) -> list[str]:
        """The options it shares with the method it builds on (python names)."""
        if self.builds_on is None:
            return []
        return [f for f in self.options.model_fields if f in self.builds_on.options.model_fields]

    def own_fields(self) -> list[str]:
        """The options that are this method's alone (python names)."""
        shared = set(self.shared_fields())
        return [f for f in self.options.model_fields if f not in shared]

    def wire(self, field: str) -> str:
        """The wire name of one of its options."""
        return self.options.model_fields[field].alias or field


_ENTRIES: dict[str, MethodEntry[Any]] = {}
_closed = False


def register_method(entry: MethodEntry[OptionsT]) -> MethodEntry[OptionsT]:
    """Add ``entry`` to the contract; call it at import time of the method's module, in
    ``finetune_api/config/methods/``."""
    if _closed:
        raise RuntimeError(
            f"method {entry.name!r} registered after MethodSpec was built; declare it in a "
            "module of finetune_api/config/methods/, which registers when the package loads"
        )
    if not _NAME.fullmatch(entry.name):
        raise ValueError(f"method name {entry.name!r}: lower-case words joined by '-'")
    if entry.name in _ENTRIES:
        raise ValueError(f"method {entry.name!r} registered twice")
    for other in _ENTRIES.values():
        if other.order == entry.order:
            raise ValueError(
                f"method {entry.name!r} has order {entry.order}, which {other.name!r} has"
            )
    base = entry.builds_on
    if base is not None:
        if _ENTRIES.get(base.name) is not base:
            raise ValueError(f"method {entry.name!r} builds on an unregistered method")
        if base.builds_on is not None:
            raise ValueError(
                f"method {entry.name!r} builds on {base.name!r}, which builds on another"
            )
        if not issubclass(entry.options, base.options):
            raise ValueError(
                f"method {entry.name!r} builds on {base.name!r}: its options "
                f"{entry.options.__name__} must extend {base.options.__name__}"
            )
    _ENTRIES[entry.name] = entry
    return entry


def close_registry() -> Mapping[str, MethodEntry[Any]]:
    """Every registered method by name, in listing order; no registration after this."""
    global _closed
    _closed = True
    if not _ENTRIES:
        raise RuntimeError("no method registered")
    ordered = sorted(_ENTRIES.values(), key=lambda entry: entry.order)
    return MappingProxyType({entry.name: entry for entry in ordered})
