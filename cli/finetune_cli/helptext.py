"""How ``finetune --help`` names its arguments and options.

Typer 0.29 labels every parameter with its Python type: ``{files}...`` and
``<list[Path]>`` for an argument, ``<bool>`` beside every flag, ``--help`` included.
Those are implementation details, not what a person types. The command and group
classes here show a parameter by its metavar instead (``FILE...``, ``URI``), and a flag
by its name alone, in the Rich panels and in the plain (``TYPER_USE_RICH=0``) help alike.

Typer builds its parameters itself (``typer.Argument`` takes no class), so the classes
adjust them as the command hands them out: a metavar for a flag is blank, and an
argument with a metavar becomes a :class:`NamedArgument`, which adds no state.
"""

from __future__ import annotations

from typing import Any

import typer.core
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


class NamedArgument(TyperArgument):
    """An argument shown by its metavar alone: ``FILE...``, never ``{files}... <list[Path]>``."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        if self.nargs != 1 and not name.endswith("..."):
            name += "..."
        return name if self.required else f"[{name}]"


def tidy(params: list[Any]) -> list[Any]:
    """``params`` labelled for a person; they are changed in place and returned."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""  # no <bool> beside a flag (--help, --cluster, --version)
        elif type(param) is TyperArgument and param.metavar is not None:
            param.__class__ = NamedArgument
    return params


class Command(TyperCommand):
    """A command whose help names parameters by their metavars (see the module)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return tidy(super().get_params(ctx))


class Group(TyperGroup):
    """The ``finetune`` group, with the same labels as :class:`Command`."""

    def get_params(self, ctx: Any) -> list[Any]:
        return tidy(super().get_params(ctx))


def markup(text: str) -> str:
    """``text`` as help: escaped for Rich when Typer renders help with Rich, where
    ``[q_proj,v_proj]`` would otherwise be read as a style tag and vanish."""
    if not typer.core.HAS_RICH:
        return text
    from rich.markup import escape

    return escape(text)


def examples(*lines: str) -> str:
    """An epilog listing example command lines, one a line.

    Rich keeps line breaks; the plain formatter rewraps a paragraph unless it starts
    with click's no-rewrap marker (``\\b``), which Rich would print."""
    if typer.core.HAS_RICH:
        return markup("Examples:\n" + "\n".join(lines))
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
