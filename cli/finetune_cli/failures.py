"""How a command tells a person it failed: one line on stderr, through the redaction
layer, and a foreseen failure's own exit code.

Every command that reaches the trainer's code (``verify``, ``plan``, ``export``,
``generate``, ``chat``) reports alike: a :class:`~finetune_trainer.errors.TrainerError`
exits with its code from the contract's table; an ``OSError`` reading a location the
user named is a storage error (exit 5) naming it. Written once here, so no command
prints an error around the redaction layer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from finetune_api.outcome import ExitCode
from finetune_api.redaction import environment_secrets, redact


def err(message: str) -> None:
    """Print ``message`` on stderr, through the redaction layer: whatever the message
    quotes (a URI as written, a library's exception, a traceback), no credential is
    shown: neither one the trainer registered nor one of this environment
    (finetune_api.redaction)."""
    typer.echo(redact(message, environment_secrets(os.environ)), err=True)


@contextmanager
def exit_on_failure(uri: str | None = None) -> Iterator[None]:
    """Run the block; a trainer error exits with its code and message, and, when the
    block reads ``uri``, an ``OSError`` (permissions, I/O) exits 5 naming it."""
    from finetune_trainer.errors import TrainerError

    try:
        yield
    except TrainerError as exc:
        err(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:
        if uri is None:
            raise
        err(f"error: {uri}: cannot read {exc.filename or ''}: {exc.strerror or exc}")
        raise typer.Exit(ExitCode.STORAGE_ERROR) from None
