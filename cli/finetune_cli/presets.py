"""``finetune presets``: the model presets catalogue (finetune_api.config.presets), so
the names ``spec.model.preset`` accepts, and what each fills in, are discoverable
without reading the docs site."""

from __future__ import annotations

from typing import Annotated

import typer
import yaml

from finetune_api.config.presets import PRESET_METHODS, get_preset, load_catalogue
from finetune_api.outcome import ExitCode
from finetune_cli.helptext import Command, examples


def register(app: typer.Typer) -> None:
    """Add ``presets`` to the ``finetune`` command."""
    app.command(
        cls=Command,
        epilog=examples("finetune presets", "finetune presets qwen2.5-7b-instruct"),
    )(presets)


def presets(
    name: Annotated[
        str | None,
        typer.Argument(metavar="NAME", help="Show what this preset fills in."),
    ] = None,
) -> None:
    """List the model presets for spec.model.preset, or show one.

    A preset fills in the options a job leaves unset; what the job sets wins."""
    if name is None:
        for preset in load_catalogue().values():
            typer.echo(f"{preset.name:28} {preset.architecture:8} {', '.join(preset.models)}")
        return
    try:
        preset = get_preset(name)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(ExitCode.INVALID_CONFIG) from None
    filled = {
        "models": list(preset.models),
        "method": {m: preset.method_options(m) for m in PRESET_METHODS},
        "training": preset.training_options(),
        "chatTemplate": preset.chat_template,
        "notes": preset.notes,
    }
    typer.echo(f"# {preset.title} ({preset.architecture})")
    typer.echo(yaml.safe_dump(filled, sort_keys=False, width=88).rstrip())
