"""The ``method`` section, derived from one registration per fine-tuning method.

A method's contract is one module of this package (``lora.py``, ``p_tuning.py``, ...):
its options model, the section ``method.<name>`` holds, and beside it one
:func:`register_method` call with the facts every side needs without running it (name,
listing order, adapter or whole model, virtual tokens, quantised base, the method it
builds on; see :class:`MethodEntry`). Importing this package imports each module here
whose name does not start with ``_``, and derives from the entries what used to be
written out per method:

- :class:`MethodSpec`: ``type`` plus one optional section per method, named after it
  (``-`` becomes ``_``, so type ``p-tuning`` has the section ``pTuning`` on the wire),
- :data:`MethodType` (the ``type`` enum) and the ``type`` field's description,
- :data:`PROMPT_LEARNING_METHODS`,
- the section rules and their CEL twins on ``spec.method``.

The trainer registers each implementation against its entry (``finetune_trainer.methods``)
and refuses to start unless every entry has exactly one.

Adding a method: a module here (options model + ``register_method``), a module in
``finetune_trainer/methods/`` (``register(Method(ENTRY, apply=...))``), and the docs (the site's
method pages; ``make crd`` and ``make docs`` regenerate the CRD and field table).

Typing: the sections are made when the package loads (pydantic's ``create_model``), so
mypy sees :class:`MethodSpec` as :class:`MethodSpecBase` (``type``, a ``str`` to it, and
the accessors). The options stay precisely typed through the entries: a method's entry
is a ``MethodEntry[ItsOptions]``, ``spec.options_for(LORA)`` is a ``LoraSpec`` and the
trainer's ``Method[LoraSpec]`` takes one; ``spec.options()`` gives the chosen method's
options typed as their common base.

A method can build on another (``builds_on``; QLoRA on LoRA): its options model extends
that method's, and the options the two share may go under the other's section, where
users of the other method already write them (``type: qlora`` with ``lora: {r: 8}`` and
only quantisation under ``qlora:``). Its own section accepts the shared options too (the
older form), but one option given under both sections is refused. The shared section is
checked as the building method's options as well (QLoRA refuses ``init: pissa`` under
``lora:`` as under ``qlora:``), and :meth:`MethodSpecBase.options` merges the two. With
both sections present a dump writes each option in the section it belongs to: dumps fill
in defaults, which would otherwise read back as options given twice, so a rendered
TrainerConfig reads back to the same options.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    create_model,
    model_serializer,
    model_validator,
)

from finetune_api.config.base import CamelModel
from finetune_api.config.methods._registry import (
    Artifact,
    MethodEntry,
    OptionsT,
    close_registry,
    register_method,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

METHODS: Mapping[str, MethodEntry[Any]] = close_registry()
"""Every method by name, in listing order."""

DEFAULT_METHOD = "lora"

if TYPE_CHECKING:
    MethodType = str
else:
    MethodType = Literal[tuple(METHODS)]
"""The ``method.type`` values (a Literal at run time, built from :data:`METHODS`)."""

PROMPT_LEARNING_METHODS: frozenset[str] = frozenset(
    name for name, entry in METHODS.items() if entry.virtual_tokens
)
"""Methods that add virtual tokens to every sequence (no room for them in packed rows)."""

MethodOptions = CamelModel
"""What :meth:`MethodSpecBase.options` returns: the chosen method's options model."""


def section_types(entry: MethodEntry[Any]) -> list[str]:
    """The types whose options may go under ``entry``'s section: its own, and those of
    the methods that build on it (``lora:`` takes qlora's LoRA options)."""
    return [entry.name, *(m.name for m in METHODS.values() if m.builds_on is entry)]


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _wire_list(entry: MethodEntry[Any], fields: list[str]) -> str:
    wires = [entry.wire(f) for f in fields]
    return wires[0] if len(wires) == 1 else f"{', '.join(wires[:-1])} and {wires[-1]}"


# --------------------------------------------------------------------------- descriptions


def _type_description() -> str:
    def listed(artifact: Artifact) -> str:
        return ", ".join(
            entry.name if entry.summary is None else f"{entry.name} ({entry.summary})"
            for entry in METHODS.values()
            if entry.artifact == artifact
        )

    return (
        f"The fine-tuning method. Adapters (published as a PEFT adapter): {listed('adapter')}. "
        f"Whole model (published as a model): {listed('model')}."
    )


def _section_description(entry: MethodEntry[Any]) -> str:
    if not entry.options.model_fields:
        return f"Options for type {entry.name} (none yet; {{}} is accepted)."
    if entry.builds_on is not None:
        base = entry.builds_on
        return (
            f"Options for type {entry.name}: {_wire_list(entry, entry.own_fields())}. Its "
            f"{base.name} options go under {base.section} (accepted here too, each option "
            f"in one of the two sections)."
        )
    builders = section_types(entry)[1:]
    if builders:
        return (
            f"Options for type {entry.name}; type {_listed(builders)} takes its "
            f"{entry.name} options here too."
        )
    return f"Options for type {entry.name}."


# --------------------------------------------------------------------------- CEL twins

_CHOSEN_CEL = f"(has(self.type) ? self.type : '{DEFAULT_METHOD}')"


def _section_rule(entry: MethodEntry[Any]) -> dict[str, str]:
    """The CEL twin of the section check in `MethodSpecBase._sections_fit_the_type`."""
    types = section_types(entry)
    allowed = f"== '{types[0]}'" if len(types) == 1 else f"in [{', '.join(map(repr, types))}]"
    return {
        "rule": f"!has(self.{entry.section}) || {_CHOSEN_CEL} {allowed}",
        "message": f"section '{entry.section}' is set but type is not {_listed(types)}",
    }


def _once_rule(entry: MethodEntry[Any]) -> dict[str, str]:
    """The CEL twin of the check that a shared option is given in one section only."""
    assert entry.builds_on is not None
    base, own = entry.builds_on.section, entry.section
    both = " || ".join(
        f"(has(self.{base}.{w}) && has(self.{own}.{w}))"
        for w in map(entry.wire, entry.shared_fields())
    )
    return {
        "rule": f"{_CHOSEN_CEL} != '{entry.name}' || !has(self.{base}) || !has(self.{own}) "
        f"|| !({both})",
        "message": f"an option is set under both {base} and {own}; with type {entry.name} give "
        f"each {entry.builds_on.name} option once, under {base}, and keep only "
        f"{_wire_list(entry, entry.own_fields())} under {own}",
    }


def _method_cel_rules(schema: dict[str, Any]) -> None:
    schema["x-kubernetes-validations"] = [
        *(_section_rule(entry) for entry in METHODS.values()),
        *(_once_rule(entry) for entry in METHODS.values() if entry.builds_on is not None),
    ]


# --------------------------------------------------------------------------- the section


def _problems(exc: ValidationError) -> str:
    """A nested model's errors as one message (what a ValueError raised here carries)."""
    found = []
    for error in exc.errors():
        cause = error.get("ctx", {}).get("error")
        message = str(cause) if cause is not None else error["msg"]
        where = ".".join(str(part) for part in error["loc"])
        found.append(f"{where}: {message}" if where else message)
    return "; ".join(found)


class MethodSpecBase(CamelModel):
    """What every MethodSpec has: ``type``, the checks across sections and the accessors.
    :class:`MethodSpec` adds one section per registered method."""

    model_config = CamelModel.model_config | ConfigDict(json_schema_extra=_method_cel_rules)

    type: MethodType = Field(default=DEFAULT_METHOD, description=_type_description())

    def section(self, entry: MethodEntry[OptionsT]) -> OptionsT | None:
        """What ``entry``'s section holds as written (None when absent)."""
        found: OptionsT | None = getattr(self, entry.field, None)
        return found

    @model_validator(mode="after")
    def _sections_fit_the_type(self) -> Self:
        chosen = METHODS[self.type]
        for entry in METHODS.values():
            types = section_types(entry)
            if self.section(entry) is not None and self.type not in types:
                what = f"type: {types[0]}" if len(types) == 1 else f"type: {_listed(types)},"
                raise ValueError(
                    f"section '{entry.section}' is set but type is '{self.type}'; set {what} "
                    f"or move the options under '{chosen.section}:'"
                )
        base, own = chosen.builds_on, self.section(chosen)
        shared = self.section(base) if base is not None else None
        if base is not None and shared is not None and own is not None:
            twice = [
                f
                for f in chosen.shared_fields()
                if f in shared.model_fields_set and f in own.model_fields_set
            ]
            if twice:
                pairs = ", ".join(
                    f"{base.section}.{chosen.wire(f)} and {chosen.section}.{chosen.wire(f)}"
                    for f in twice
                )
                raise ValueError(
                    f"{pairs} are both set; with type {chosen.name} give each {base.name} option "
                    f"once, under {base.section}:, and keep only "
                    f"{_wire_list(chosen, chosen.own_fields())} under {chosen.section}:"
                )
        return self

    @model_serializer(mode="wrap")
    def _each_option_in_its_section(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        """With a building method's options in two sections, write the shared options
        under the base section and its own under its section (see the module's doc)."""
        data: dict[str, Any] = handler(self)
        chosen = METHODS[self.type]
        base = chosen.builds_on
        if base is None or self.section(base) is None:
            return data
        options = self.options()

        def dump(entry: MethodEntry[Any], fields: list[str]) -> None:
            key = entry.section if info.by_alias else entry.field
            if key in data and self.section(entry) is not None:
                data[key] = options.model_dump(
                    mode=info.mode,
                    by_alias=info.by_alias,
                    include=set(fields),
                    exclude_unset=info.exclude_unset,
                    exclude_defaults=info.exclude_defaults,
                    exclude_none=info.exclude_none,
                    round_trip=info.round_trip,
                )

        dump(base, chosen.shared_fields())
        dump(chosen, chosen.own_fields())
        return data

    @classmethod
    def section_names(cls) -> list[str]:
        """Wire names of the method sections, in listing order."""
        return [entry.section for entry in METHODS.values()]

    def options(self) -> MethodOptions:
        """The chosen method's options, defaults filled in for what no section gives."""
        chosen: MethodEntry[MethodOptions] = METHODS[self.type]
        return self.options_for(chosen)

    def options_for(self, entry: MethodEntry[OptionsT]) -> OptionsT:
        """The options of ``entry``, which must be the chosen method; typed as its model."""
        if entry is not METHODS.get(self.type):
            raise ValueError(f"method.type is {self.type}, not {entry.name}")
        own = self.section(entry)
        shared = self.section(entry.builds_on) if entry.builds_on is not None else None
        if shared is None:
            return own if own is not None else entry.options.model_validate({})
        given = shared.model_dump(exclude_unset=True)
        if own is not None:
            given |= own.model_dump(exclude_unset=True)
        return entry.options.model_validate(given)


def _checked_as(entry: MethodEntry[Any]) -> Callable[[Any, ValidationInfo], Any]:
    """For ``entry``'s section: when the chosen method builds on ``entry``, the section
    carries that method's options, so they must pass its checks too (QLoRA's refusal
    of init pissa/olora, under ``lora:``). The error is reported at the section."""

    def check(section: Any, info: ValidationInfo) -> Any:
        chosen = METHODS.get(info.data.get("type", ""))  # absent when type was invalid
        if section is not None and chosen is not None and chosen.builds_on is entry:
            try:
                chosen.options.model_validate(section.model_dump(exclude_unset=True))
            except ValidationError as exc:
                raise ValueError(_problems(exc)) from None
        return section

    return check


if TYPE_CHECKING:
    MethodSpec = MethodSpecBase
else:

    def _section_field(entry: MethodEntry[Any]) -> Any:
        annotation = Annotated[entry.options | None, AfterValidator(_checked_as(entry))]
        return (annotation, Field(default=None, description=_section_description(entry)))

    MethodSpec = create_model(
        "MethodSpec",
        __base__=MethodSpecBase,
        __module__=__name__,
        __doc__="The fine-tuning method: its type and, optionally, that method's own section.",
        **{entry.field: _section_field(entry) for entry in METHODS.values()},
    )

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "PROMPT_LEARNING_METHODS",
    "MethodEntry",
    "MethodOptions",
    "MethodSpec",
    "MethodSpecBase",
    "MethodType",
    "register_method",
    "section_types",
]
