"""The trainer's human output: log lines on stderr, as ``message key=value ...``.

stdout belongs to the JSON progress stream (:mod:`finetune_trainer.telemetry`), so that
``finetune run job.yaml > progress.jsonl`` is JSONL line by line; everything for a
person goes to stderr. A progress bar may be drawn there too: log lines are written
through ``tqdm.write``, which clears the bar, writes the line and redraws the bar, so
neither ends up glued to the other.

Every record passes the redaction layer (:func:`install_redaction`): no log line shows a
credential, whoever wrote it.

Log lines carry their values as ``key=value`` pairs (:func:`kv`), which people read and
log tools (logfmt, Loki, ``grep``) parse, rather than Python reprs of dicts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from typing import IO

from finetune_api import redaction

LOGGER = "finetune.trainer"

BAR_WIDTH = 100
"""Columns of the progress bar when the terminal says it has none (``stty cols 0``,
some CI pseudo-terminals), where tqdm would drop the bar and keep only the numbers."""


def _text(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".6g") if math.isfinite(value) else str(value).lower()
    text = str(value)
    if not text or any(c.isspace() or c in '"=\\' for c in text):
        return json.dumps(text, ensure_ascii=False)  # quoted, inner quotes escaped
    return text


def kv(**fields: object) -> str:
    """``key=value`` pairs in the order given, for a log line: ``log.info("data %s",
    kv(rows=12, uri="file:///x"))``. Text with spaces, quotes or ``=`` (or none at all)
    is double-quoted; floats have 6 significant digits; None is ``null``."""
    return " ".join(f"{key}={_text(value)}" for key, value in fields.items())


class TqdmHandler(logging.Handler):
    """Writes each record to the current ``sys.stderr`` with ``tqdm.write``: a bar drawn
    there is cleared first and redrawn after, so the line never lands inside the bar.

    ``sys.stderr`` is looked up per record (a test runner may swap it between runs)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            stream = sys.stderr
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except Exception:
            self.handleError(record)


def stderr_handler() -> logging.Handler:
    """The trainer's log handler: ``HH:MM:SS message`` through tqdm on stderr, each
    record redacted (a second line of defence behind :func:`install_redaction`)."""
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(redaction.RedactingFilter())
    return handler


def install_redaction(environ: Mapping[str, str] | None = None) -> None:
    """Put the redaction layer (:mod:`finetune_api.redaction`) in front of every log
    record of this process, ours and the libraries' (boto's, tenacity's, the Hub
    client's retry warnings), whichever handler prints it, and register the secrets of
    ``environ`` (default: the process's environment: AWS keys, HF_TOKEN, tracker
    tokens, the password of an ``AWS_ENDPOINT_URL``). Called once a run starts; calling
    it again only registers what the environment holds now."""
    redaction.register_environment(os.environ if environ is None else environ)
    redaction.install_logging()


def bar_width(stream: IO[str]) -> int | None:
    """Columns for a bar drawn on ``stream``: the terminal's width; :data:`BAR_WIDTH` when
    the terminal reports 0 columns; None (tqdm's own default) when it is no terminal."""
    try:
        if not stream.isatty():
            return None
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return None
    return columns or BAR_WIDTH


def quiet_libraries() -> None:
    """Keep the run's output to our progress and results: library chatter goes. Our
    own log lines go to stderr through tqdm (this module), unless the host program
    configured logging itself. Here, not in the recipe, so that loading a published set
    (:mod:`finetune_trainer.inference`) quiets them without depending on the recipe."""
    import warnings

    import transformers

    # bitsandbytes logs at import that an optional CPU kernel package is absent; the
    # built-in kernels it falls back to are what we use anyway.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    install_redaction()  # before anything reads a credential or logs a line
    ours = logging.getLogger(LOGGER)
    if not logging.getLogger().handlers and not ours.handlers:
        ours.addHandler(stderr_handler())
        ours.setLevel(logging.INFO)
