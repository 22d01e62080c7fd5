"""The CLI reference page, generated from the command tree itself.

``docs/reference/cli.md`` carries, between ``<!-- cli:start -->`` and ``<!-- cli:end -->``,
every command's usage, description, arguments and options with their defaults. They are
read from what typer builds for ``finetune`` (``typer.main.get_command``), the same
objects ``--help`` prints, so a command or an option added to app.py appears here on the
next ``make docs`` and a unit test fails until it does. The help formatter's terminal
output is not reused: it is boxed, wrapped to the terminal and may carry ANSI colours.

This lives in the CLI package, not the contract's ``finetune_api.docs``, because the
contract never imports the CLI; ``generated_sections`` adds this section to the
contract's list, so the update script and the tests read one list.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import typer
import typer.core

# typer 0.29 vendors its own click (pinned in pyproject.toml); these are its classes.
from typer._click import Command, Context, Parameter
from typer.core import TyperArgument, TyperGroup, TyperOption

from finetune_api.docs import SECTIONS, Section

CLI_PAGE = "docs/reference/cli.md"


@dataclass(frozen=True)
class ParamRow:
    """One argument or option: the names a user types, its type, default and help."""

    names: tuple[str, ...]
    negative: tuple[str, ...]
    """A boolean flag's off form (``--no-data``), if it has one."""
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class CommandDoc:
    """One command (or the root group) as its reference section shows it."""

    path: str
    """The command line that invokes it, e.g. ``finetune plan``."""
    usage: str
    description: str
    arguments: list[ParamRow]
    options: list[ParamRow]


def command_docs(app: typer.Typer | None = None) -> list[CommandDoc]:
    """The root and every visible command under it, depth first, in registration order."""
    if app is None:
        from finetune_cli.app import app as finetune

        app = finetune
    root = typer.main.get_command(app)
    return list(_walk(root, _context(root, app.info.name or "finetune", None)))


def _context(command: Command, name: str, parent: Context | None) -> Context:
    # What make_context would build, without parsing arguments: the command's
    # context_settings (e.g. help_option_names) decide which help options exist.
    return command.context_class(command, info_name=name, parent=parent, **command.context_settings)


def _walk(command: Command, ctx: Context) -> Iterator[CommandDoc]:
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    plain = _plain_text(command)
    yield CommandDoc(
        path=ctx.command_path,
        usage=" ".join([ctx.command_path, *command.collect_usage_pieces(ctx)]),
        description=plain(_help_text(command.help, command.epilog)),
        arguments=[_row(p, ctx, plain) for p in params if isinstance(p, TyperArgument)],
        options=[_row(p, ctx, plain) for p in params if isinstance(p, TyperOption)],
    )
    if isinstance(command, TyperGroup):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, _context(sub, name, ctx))


def _help_text(help: str | None, epilog: str | None) -> str:
    """The help as written: click's ``\\f`` ends what is shown, ``\\b`` lines are markup."""
    parts = []
    for text in (help, epilog):
        if text:
            shown = inspect.cleandoc(text.split("\f", 1)[0])
            parts.append("\n".join(line for line in shown.splitlines() if line.strip() != "\b"))
    return "\n\n".join(parts)


def _plain_text(command: Command) -> Callable[[str], str]:
    """What the terminal shows of a help text: Rich markup rendered, escapes undone.

    Where typer renders help with Rich, the CLI escapes literal brackets
    (``\\[q_proj]``) and may style words (``[bold]``); the page wants the text a
    person reads, so the markup is rendered and only its plain text kept.
    """
    if not typer.core.HAS_RICH or getattr(command, "rich_markup_mode", None) is None:
        return lambda text: text

    from rich.errors import MarkupError
    from rich.markup import render

    def plain(text: str) -> str:
        try:
            return render(text).plain
        except MarkupError:  # not markup after all: shown as written
            return text

    return plain


def _row(param: Parameter, ctx: Context, plain: Callable[[str], str]) -> ParamRow:
    assert isinstance(param, TyperArgument | TyperOption)
    description = plain(param.help or "")
    if param.envvar:
        names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
        description += " Environment: " + ", ".join(f"${n}" for n in names) + "."
    negative = tuple(param.secondary_opts) if isinstance(param, TyperOption) else ()
    return ParamRow(
        _names(param), negative, _type(param, ctx), _default(param), description.strip()
    )


def _names(param: TyperArgument | TyperOption) -> tuple[str, ...]:
    if isinstance(param, TyperArgument):
        name = param.display_name_raw
        return (name + ("..." if param.nargs != 1 and not name.endswith("...") else ""),)
    # short forms first, as --help lists them
    return tuple(sorted(param.opts, key=lambda opt: opt.startswith("--")))


def _type(param: TyperArgument | TyperOption, ctx: Context) -> str:
    if isinstance(param, TyperOption) and param.is_flag:
        return "flag"
    # an option's metavar (``PATH=VALUE``) says more than its Python type
    metavar = param.metavar if isinstance(param, TyperOption) else None
    label = metavar or param.display_type(ctx).strip("<>")
    if param.min is not None or param.max is not None:
        bounds = [f"≥ {param.min}"] if param.min is not None else []
        bounds += [f"≤ {param.max}"] if param.max is not None else []
        label = f"{param.bare_type()}, {', '.join(bounds)}"
    if isinstance(param, TyperOption) and param.multiple:
        label += ", repeatable"
    return label


def _default(param: TyperArgument | TyperOption) -> str:
    if param.required:
        return "required"
    value: Any = param.default
    if value is None or callable(value) or value in ((), []):
        return ""
    if isinstance(param, TyperOption) and param.is_flag:
        # a --x/--no-x pair shows the side that applies; a lone flag is off unless given
        if param.secondary_opts:
            return f"`{param.opts[-1] if value else param.secondary_opts[0]}`"
        return "" if value is False else "`on`"
    if isinstance(value, list | tuple):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{getattr(value, 'value', value)}`"


# --------------------------------------------------------------------------- Markdown


def _escape(text: str) -> str:
    """Help text is plain prose; characters Markdown would act on are made literal."""
    for char in ("\\", "`", "*", "_", "[", "]"):
        text = text.replace(char, "\\" + char)
    return text.replace("<", "&lt;")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _param_table(heading: str, rows: list[ParamRow]) -> list[str]:
    if not rows:
        return []
    lines = [f"**{heading}**", "", f"| {heading[:-1]} | Type | Default | Description |"]
    lines.append("|---|---|---|---|")
    for row in rows:
        names = ", ".join(f"`{name}`" for name in row.names)
        if row.negative:
            names += " / " + ", ".join(f"`{name}`" for name in row.negative)
        cells = (names, row.type, row.default, _escape(row.description))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return [*lines, ""]


def _paragraph(text: str) -> list[str]:
    """Help prose is wrapped at the source's width, so its lines are joined; a list of
    example command lines (a paragraph opening with ``Examples:``) keeps its lines, as
    a code block."""
    first, _, rest = text.strip().partition("\n")
    if first.strip() in ("Example:", "Examples:") and rest.strip():
        commands = [line.strip() for line in rest.splitlines() if line.strip()]
        return [f"**{first.strip()[:-1]}**", "", "```text", *commands, "```", ""]
    if not text.strip():
        return []
    return [_escape(" ".join(text.split())), ""]


def render_command(doc: CommandDoc) -> str:
    """One command's section: heading, usage, description, arguments and options."""
    # level 3: the page puts them under its own "Every command and option" heading
    lines = [f"### `{doc.path}`", "", "```text", doc.usage, "```", ""]
    for paragraph in doc.description.split("\n\n"):
        lines += _paragraph(paragraph)
    lines += _param_table("Arguments", doc.arguments)
    lines += _param_table("Options", doc.options)
    return "\n".join(lines)


def render_cli_reference(app: typer.Typer | None = None) -> str:
    """Every command of ``finetune`` as Markdown, for the CLI reference page."""
    return "\n".join(render_command(doc) for doc in command_docs(app))


CLI_SECTION = Section("cli", CLI_PAGE, render_cli_reference)


def generated_sections() -> tuple[Section, ...]:
    """Every generated section of the site: the contract's and the CLI's.

    One list for ``make docs`` (scripts/update_docs.py) and the tests that check the
    pages are current.
    """
    return (*SECTIONS, CLI_SECTION)
