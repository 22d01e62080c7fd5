"""``finetune export``: a published adapter merged into its base (or a whole model
converted), published as safetensors or GGUF with its own manifest.

Thin: arguments in, :func:`finetune_trainer.export.artifact.export` called, errors
reported with the trainer's exit codes. The training stack is imported inside.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from finetune_cli.failures import exit_on_failure
from finetune_cli.helptext import Command, examples
from finetune_cli.uris import as_uri


class ExportFormat(StrEnum):
    safetensors = "safetensors"
    gguf = "gguf"


class ExportDtype(StrEnum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


def register(app: typer.Typer) -> None:
    """Add ``export`` to the ``finetune`` command."""
    app.command(
        cls=Command,
        epilog=examples(
            "finetune export ./artifacts/my-job --to ./exports/my-job-merged",
            "finetune export s3://bucket/adapters/my-job --to s3://bucket/models/my-job "
            "--dtype bfloat16",
            "finetune export ./artifacts/my-job --to ./exports/my-job-gguf --format gguf "
            "--dtype float16",
        ),
    )(export)


def export(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SRC",
            help="A published artifact set (an adapter, or a whole model: full, freeze, "
            "progressive): a local "
            "path or a URI such as file://./artifacts/x or s3://bucket/x",
        ),
    ],
    to: Annotated[
        str,
        typer.Option("--to", metavar="URI", help="Where to publish the export (any output URI)"),
    ],
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="safetensors: Hugging Face shards, config and tokenizer (vLLM, TGI, "
            "transformers). gguf: one model.gguf for llama.cpp and Ollama (llama "
            "architecture).",
        ),
    ] = ExportFormat.safetensors,
    dtype: Annotated[
        ExportDtype | None,
        typer.Option(
            metavar="DTYPE",
            help="Dtype of the exported weights: float32, float16 or bfloat16. Default: the "
            "base model's.",
        ),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            metavar="URI",
            help="The base model to merge into. Default: the one the set's manifest.json "
            "names (baseModel, at the spec's revision).",
        ),
    ] = None,
) -> None:
    """Merge a published adapter into its base model and publish the result.

    The merge reads the base one safetensors shard at a time and writes each merged
    shard before reading the next: it needs the memory of one shard and the adapter,
    not of the whole model. The source is checked against its manifest first; the
    export gets its own manifest.json, so `finetune verify` checks it.

    Prefix, prompt and p-tuning adapters are virtual tokens, not weights: they cannot be
    merged (serve the base model with the adapter). Full, freeze and progressive outputs
    are whole models already: they are converted (dtype, format), nothing is merged.

    Exit 0: published. Exit 2: the set cannot be merged or exported as asked. Exit 5
    (7): a location cannot be read or written (retrying may help with 7).
    """
    from finetune_trainer.export.artifact import export as run_export

    with exit_on_failure():
        result = run_export(
            as_uri(source),
            as_uri(to),
            fmt=fmt.value,
            dtype=None if dtype is None else dtype.value,
            base_uri=None if base is None else as_uri(base),
        )
    what = "merged" if result.merged else "converted (a whole model: nothing to merge)"
    size = sum(int(f["size"]) for f in result.files)
    typer.echo(
        f"{what}, {result.format}, {len(result.files)} files, {size / 1e6:.1f} MB: {result.uri}"
    )
