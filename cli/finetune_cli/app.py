"""The ``finetune`` command line: validate, run locally, train, print the CRD.

Thin on purpose: each command parses arguments and calls a pure function or the
trainer's runner. The training stack is imported inside ``run`` and ``train`` only,
so ``validate`` and ``crd`` work with the operator's dependencies alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from pydantic import ValidationError

from finetune_api.config import TrainerConfig
from finetune_api.manifests import Document, ManifestError, explain, read_file
from finetune_api.outcome import ExitCode
from finetune_api.overrides import Override, check_with_overrides, parse_overrides
from finetune_api.plan.devices import DEVICES
from finetune_api.redaction import redact
from finetune_api.render import RenderError, local_output_uri, render_trainer_config
from finetune_api.resource import FineTuneJob
from finetune_api.uri import without_credentials
from finetune_cli import generate as try_it
from finetune_cli.export import register as register_export
from finetune_cli.failures import err as _err
from finetune_cli.failures import exit_on_failure
from finetune_cli.helptext import Command, Group, examples, markup
from finetune_cli.presets import register as register_presets
from finetune_cli.uris import as_uri

if TYPE_CHECKING:
    from finetune_trainer.outcome import Outcome

PACKAGE = "finetune-operator"

app = typer.Typer(
    name="finetune",
    cls=Group,
    help="Fine-tune language models from FineTuneJob manifests, locally or on Kubernetes.",
    epilog=examples(
        "finetune validate job.yaml",
        "finetune plan job.yaml --set training.batchSize=4",
        "finetune run job.yaml --set training.learningRate=1e-4 --output ./out",
        "finetune docs training.learningRate",
    ),
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)

# An invalid manifest exits like an invalid configuration in the trainer (the contract's
# table, finetune_api.outcome); `run` passes the trainer's own codes through.
EXIT_INVALID = int(ExitCode.INVALID_CONFIG)

GPU_TYPES = list(DEVICES)

# `finetune run` serves the trainer's /metrics to this machine only.
LOCAL_METRICS_ADDR = "127.0.0.1"


# `--set`, on every command that reads a manifest.
SET_HELP = markup(
    "Override a manifest field, as if the file said so (repeatable): the field's path in "
    "the manifest, with or without the leading spec., and a YAML value, e.g. "
    "training.learningRate=1e-4, method.lora.r=8, method.lora.targetModules=[q_proj,v_proj]. "
    "The result is validated like the file."
)


def complete_set(incomplete: str) -> list[str]:
    """Shell completion for ``--set``: the settable paths, written without ``spec.``."""
    from finetune_api.overrides import ROOTS, known_paths

    paths = (p.removeprefix("spec.") for p in known_paths() if p not in ROOTS)
    return [f"{p}=" for p in paths if p.startswith(incomplete)]


def complete_field(incomplete: str) -> list[str]:
    """Shell completion for ``finetune docs FIELD``: the reference's paths."""
    from finetune_api.docs import field_rows

    paths = (row.path.removeprefix("spec.") for row in field_rows())
    return [p for p in paths if p.startswith(incomplete.removeprefix("spec."))]


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="PATH=VALUE", help=SET_HELP, autocompletion=complete_set),
]


def _version(value: bool) -> None:
    """Print the installed package's version and stop (``--version``)."""
    if not value:
        return
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown (not installed as a package)"
    typer.echo(f"finetune {version}")
    raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Fine-tune language models from FineTuneJob manifests, locally or on Kubernetes."""


def _overrides(texts: Sequence[str] | None) -> list[Override]:
    """The ``--set`` overrides, parsed and checked against the models; exit 2 otherwise."""
    try:
        return parse_overrides(texts or [])
    except ManifestError as exc:
        _err(str(exc))
        raise typer.Exit(EXIT_INVALID) from None


def _report(doc: Document, overrides: Sequence[Override] = ()) -> None:
    """Say whether ``doc`` is valid; a problem at a field ``--set`` wrote says so, since
    the file does not hold the value."""
    if doc.job is not None:
        typer.echo(redact(f"{doc.label}: valid"))
        return
    _err(f"{doc.label}: invalid")
    written = {override.field for override in overrides}
    for problem in doc.problems:
        _err(f"  - {problem} (from --set)" if problem.path in written else f"  - {problem}")


@app.command(
    cls=Command,
    epilog=examples(
        "finetune validate job.yaml",
        "finetune validate jobs/*.yaml --cluster",
        "finetune validate job.yaml --set training.learningRate=1e-4 --set method.lora.r=8",
    ),
)
def validate(
    files: Annotated[
        list[Path],
        typer.Argument(metavar="FILE...", help="YAML files; multi-document files are fine."),
    ],
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="Also apply what a cluster needs (an output URI, a GPU for fp16, pod names "
            "that fit): exactly what the operator refuses before creating anything.",
        ),
    ] = False,
    set_: SetOption = None,
) -> None:
    """Check FineTuneJob manifests; exit 0 only when every document is valid.

    With --set, each document is checked as overridden."""
    overrides = _overrides(set_)
    failed = False
    for path in files:
        try:
            documents = check_with_overrides(
                read_file(str(path)), str(path), overrides, "cluster" if cluster else "job"
            )
        except ManifestError as exc:
            _err(str(exc))
            failed = True
            continue
        for doc in documents:
            _report(doc, overrides)
            failed = failed or doc.job is None
    if failed:
        raise typer.Exit(EXIT_INVALID)


@app.command(cls=Command, epilog=examples("finetune crd | kubectl apply -f -"))
def crd() -> None:
    """Print the FineTuneJob CustomResourceDefinition generated from the models."""
    from finetune_api.crd import render_crd_yaml

    typer.echo(render_crd_yaml(), nl=False)


@app.command(
    cls=Command,
    epilog=examples(
        "finetune docs training.learningRate",
        "finetune docs method.lora",
        "finetune docs learningRate",
        "finetune docs > fields.md",
    ),
)
def docs(
    field: Annotated[
        str | None,
        typer.Argument(
            metavar="FIELD",
            autocompletion=complete_field,
            help="A spec field or section, with or without the leading spec. (e.g. "
            "training.learningRate, method.lora); a bare name finds every field of that name.",
        ),
    ] = None,
) -> None:
    """Print the spec field reference: one field or section, or the whole Markdown table.

    Without FIELD: the whole table (docs/reference/api.md carries it). Exit 2 when no
    field matches."""
    from finetune_api.docs import field_rows, render_field_table
    from finetune_cli.fields import UnknownField, render, select

    if field is None:
        typer.echo(render_field_table(), nl=False)
        return
    try:
        rows = select(field_rows(), field)
    except UnknownField as exc:
        hint = f"; did you mean {', '.join(exc.suggestions)}?" if exc.suggestions else ""
        _err(f"{field}: no such field in the spec{hint}")
        raise typer.Exit(EXIT_INVALID) from None
    typer.echo(render(rows), nl=False)


@app.command(
    cls=Command,
    epilog=examples(
        "finetune run job.yaml",
        "finetune run job.yaml --max-steps 5 --output ./try",
        "finetune run job.yaml --set training.learningRate=5e-5 --set training.epochs=2",
    ),
)
def run(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="A FineTuneJob manifest (one document).")
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            metavar="URI",
            help="Publish here instead of spec.output.uri: a URI, or a local path (for file://).",
        ),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            "--max-steps",
            min=1,
            metavar="N",
            help="Stop after N optimizer steps (for a quick try).",
        ),
    ] = None,
    set_: SetOption = None,
) -> None:
    """Fine-tune on this machine (CUDA when present, else CPU) and publish the adapter.

    The published manifest.json records the spec as run, --set overrides included."""
    job = _one_job(file, "run", _overrides(set_))
    config = _local_config(file, job, as_uri(output) if output else None, max_steps)
    # Locally the default port (9090) is often taken, by Prometheus itself: unless the
    # manifest chose a port, /metrics goes on a free one.
    chosen = "metrics_port" in job.spec.training.model_fields_set
    _run_trainer(config, pod=False, free_metrics_port=not chosen)


def _one_job(file: Path, command: str, overrides: Sequence[Override] = ()) -> FineTuneJob:
    """The one valid FineTuneJob in ``file``, ``overrides`` applied; exit 2 with the
    problems otherwise."""
    try:
        documents = check_with_overrides(read_file(str(file)), str(file), overrides)
    except ManifestError as exc:
        _err(str(exc))
        raise typer.Exit(EXIT_INVALID) from None
    if len(documents) != 1:
        _err(
            f"{file}: holds {len(documents)} documents; `finetune {command}` takes one FineTuneJob"
        )
        raise typer.Exit(EXIT_INVALID)
    doc = documents[0]
    if doc.job is None:
        _report(doc, overrides)
        raise typer.Exit(EXIT_INVALID)
    return doc.job


def _local_config(
    file: Path, job: FineTuneJob, output: str | None, max_steps: int | None
) -> TrainerConfig:
    """The TrainerConfig a local run of ``job`` uses; exit 2 when an override breaks a rule.

    A problem with ``output`` (``--output``: not a URI for artifacts, or one a rule
    refuses) is reported against ``--output``, which is where the value came from."""
    uri = output or job.spec.output.uri or local_output_uri(job.metadata.name)
    try:
        return render_trainer_config(job, uri, local=True, max_steps=max_steps)
    except ValidationError as exc:  # an override broke a rule or a bound
        for problem in explain(exc, TrainerConfig):
            if output is not None and problem.path in ("uri", "output.uri"):
                _err(f"--output {without_credentials(output)}: {problem.message}")
            else:
                _err(f"{file}: {problem}")
        raise typer.Exit(EXIT_INVALID) from None
    except (RenderError, ValueError) as exc:
        _err(f"{file}: {exc}")
        raise typer.Exit(EXIT_INVALID) from None


@app.command(
    cls=Command,
    epilog=examples(
        "finetune plan job.yaml",
        "finetune plan job.yaml --gpu A10G --no-data",
        "finetune plan job.yaml --set training.batchSize=4 -o json",
    ),
)
def plan(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="A FineTuneJob manifest (one document).")
    ],
    gpu: Annotated[
        str | None,
        typer.Option(
            "--gpu",
            metavar="GPU",
            help="Plan for this GPU type (one per resources.gpus, at least one) instead of "
            "the manifest's resources: " + ", ".join(GPU_TYPES) + ".",
        ),
    ] = None,
    output_format: Annotated[
        str, typer.Option("-o", "--output", metavar="FORMAT", help="table or json.")
    ] = "table",
    read_data: Annotated[
        bool,
        typer.Option(
            "--data/--no-data",
            help="Tokenize the dataset to count rows, tokens and steps (the run reuses the "
            "cache); --no-data plans from the spec alone, as the operator does.",
        ),
    ] = True,
    set_: SetOption = None,
) -> None:
    """Memory per device, steps, time and fit of a job, before anything is allocated.

    Reads the base model's config.json and tokenizer (not its weights) and the dataset.
    Without resources.gpus (and --gpu) the job is planned for this machine's CPUs and
    memory. Exit 0 when the job fits or the memory is unknown, 6 when it does not fit."""
    if gpu is not None and gpu not in GPU_TYPES:
        _err(f"--gpu {gpu}: not a GPU type the planner knows; use one of {', '.join(GPU_TYPES)}")
        raise typer.Exit(EXIT_INVALID)
    if output_format not in ("table", "json"):
        _err(f"-o {output_format}: use table or json")
        raise typer.Exit(EXIT_INVALID)
    from finetune_api.plan import ShapeError, plan_job
    from finetune_api.plan.target import target_for
    from finetune_api.plan.text import render_plan
    from finetune_api.render import with_preset
    from finetune_trainer.planning import host_cores, host_memory, plan_inputs

    job = _one_job(file, "plan", _overrides(set_))
    config = _local_config(file, job, None, None)
    try:
        with exit_on_failure():
            shape, data = plan_inputs(config, read_data=read_data)
    except ShapeError as exc:
        _err(f"error: {config.model.uri}: {exc}")
        raise typer.Exit(int(ExitCode.MODEL_LOAD_FAILED)) from None
    target = target_for(job.spec, gpu=gpu, cpu_cores=host_cores(), host_memory=host_memory())
    result = plan_job(with_preset(job.spec), shape, target, data)  # as the trainer runs it
    if output_format == "json":
        typer.echo(result.model_dump_json(indent=2))
    else:
        typer.echo(render_plan(result, f"{job.metadata.name} ({file})"))
    if result.fits is False:
        raise typer.Exit(int(ExitCode.OUT_OF_MEMORY))


@app.command(
    cls=Command,
    epilog=examples(
        "finetune verify ./artifacts/my-job",
        "finetune verify s3://my-bucket/adapters/my-job",
    ),
)
def verify(
    location: Annotated[
        str,
        typer.Argument(
            metavar="URI",
            help="A published artifact set: a local path, or a URI such as "
            "file://./artifacts/x or s3://bucket/x",
        ),
    ],
) -> None:
    """Check a published artifact set against its manifest.json (sizes and sha256).

    Remote locations (s3://) use the standard AWS credentials of this environment
    (AWS_* variables, ~/.aws files, AWS_ENDPOINT_URL, AWS_S3_ADDRESSING_STYLE).

    Exit 0: every file matches. Exit 1: the set does not match (each problem listed: a
    missing, changed or unlisted file, a missing or damaged manifest.json). Exit 5 (7):
    the location cannot be read (retrying may help with 7), as for a run.
    """
    from finetune_api.uri import Role
    from finetune_trainer.publish import verify_manifest, verify_store
    from finetune_trainer.storage.backends import LocalBackend, backend_for, open_store

    uri = as_uri(location)
    with exit_on_failure(uri):
        backend, parsed = backend_for(uri, Role.OUTPUT)
        if isinstance(backend, LocalBackend):
            problems = verify_manifest(backend.resolve(parsed))
        else:
            problems = verify_store(open_store(uri))
    for problem in problems:
        _err(f"  - {problem}")
    if problems:
        _err(f"{uri}: does not match its manifest")
        raise typer.Exit(1)
    typer.echo(f"{uri}: every file matches manifest.json")


# Trying a published model (finetune_cli.generate): thin commands over the trainer's
# inference module, registered here so the command tree has one root.
app.command(
    cls=Command,
    epilog=examples(
        "finetune generate ./artifacts/my-job -p 'What is LoRA?'",
        "finetune generate s3://my-bucket/adapters/my-job -p - < question.txt",
        "finetune generate ./merged --no-chat-template -p 'Once upon a time' --temperature 0.8",
    ),
)(try_it.generate)
app.command(
    cls=Command,
    epilog=examples("finetune chat ./artifacts/my-job", "finetune chat ./out < questions.txt"),
)(try_it.chat)
# Merging an adapter into its base, exporting safetensors or GGUF (finetune_cli.export).
register_export(app)
register_presets(app)  # the model presets catalogue (finetune_cli.presets)


@app.command(
    cls=Command,
    epilog=examples("finetune train --config /etc/finetune/trainer-config.json"),
)
def train(
    config: Annotated[
        Path, typer.Option("--config", metavar="FILE", help="A rendered TrainerConfig (JSON).")
    ],
    termination_log: Annotated[
        Path | None,
        typer.Option(
            "--termination-log",
            metavar="FILE",
            help="Write the outcome summary (JSON) here. Default: $FINETUNE_TERMINATION_LOG, "
            "else /dev/termination-log when it exists (the kubelet creates it in a pod).",
        ),
    ] = None,
) -> None:
    """Run the trainer from a TrainerConfig file (the training pod's entrypoint).

    Logs one JSON line per step; exit codes and the termination message:
    docs/reference/exit-codes.md."""
    from finetune_trainer.config_file import load_trainer_config
    from finetune_trainer.errors import ConfigError
    from finetune_trainer.outcome import failed

    try:
        trainer_config = load_trainer_config(config)
    except ConfigError as exc:
        outcome = failed(exc)
        _err(f"error: {outcome.message}")
        _finish(outcome, termination_log, pod=True)
    _run_trainer(trainer_config, pod=True, termination_log=termination_log)


@app.command(
    cls=Command,
    epilog=examples("finetune operator", "finetune operator -n ml-team -n ml-research"),
)
def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace",
            "-n",
            metavar="NAMESPACE",
            help="Watch only this namespace (repeatable). Default: $FINETUNE_WATCH_NAMESPACES, "
            "else the whole cluster.",
        ),
    ] = None,
    peering: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="kopf peering name: replicas sharing it elect one active operator (needs the "
            "chart's KopfPeering resources). Default: standalone, for one replica.",
        ),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="This replica's kopf peering priority (the highest acts). Default: random, "
            "so replicas never tie.",
        ),
    ] = None,
    liveness: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Where kopf serves the liveness check. Default: "
            "http://0.0.0.0:$FINETUNE_HEALTH_PORT/healthz (port 8080); readiness is /readyz "
            "on the metrics port ($FINETUNE_METRICS_PORT, 8000).",
        ),
    ] = None,
) -> None:
    """Run the operator: watch FineTuneJobs and run them as training Jobs."""
    import kopf

    from finetune_operator.handlers import start_runtime  # registers the handlers
    from finetune_operator.observation.probes import STARTUP, liveness_endpoint
    from finetune_operator.settings import Settings

    settings = Settings.from_env()
    namespaces = list(namespace or settings.namespaces)
    memo = start_runtime(settings)
    kopf.configure(verbose=False)
    # kopf pauses every peer when the highest priority is shared: each replica draws its
    # own, and the one with the highest acts while the others stand by.
    rank = priority if priority is not None else random.SystemRandom().randint(1, 2**31 - 1)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=peering is None,
        peering_name=peering,
        priority=rank if peering is not None else None,
        liveness_endpoint=liveness or liveness_endpoint(settings.health_port),
        memo=memo,
        ready_flag=memo.readiness.flag(STARTUP),
    )


def _run_trainer(
    config: TrainerConfig,
    *,
    pod: bool,
    termination_log: Path | None = None,
    free_metrics_port: bool = False,
) -> NoReturn:
    """Run the trainer in this process and exit with the code that classifies the end.

    stdout carries only the JSON progress lines; the summary and every other line for a
    person go to stderr. A pod serves /metrics on every interface at
    ``training.metricsPort`` (the Job's container port); a local run on 127.0.0.1, at a
    free port with ``free_metrics_port``, and says where.

    Every exception is classified (finetune_trainer.outcome), not only the trainer's own:
    an out-of-memory error from deep inside torch must still exit with its own code.
    Unforeseen errors keep their traceback on stderr; foreseen ones print a message."""
    import traceback

    from finetune_trainer.outcome import failed, published
    from finetune_trainer.runner import run_training
    from finetune_trainer.telemetry import Telemetry, progress_for

    progress = progress_for(pod=pod)
    if pod:
        telemetry = Telemetry.from_config(config, progress=progress)
    else:
        telemetry = Telemetry.from_config(
            config, progress=progress, addr=LOCAL_METRICS_ADDR, free_port=free_metrics_port
        )
    try:
        with telemetry:
            if not pod and telemetry.url is not None:
                _err(f"metrics: {telemetry.url}")
            result = run_training(config, telemetry)
    except Exception as exc:
        outcome = failed(exc, telemetry.last_step)
        if outcome.exit_code == 1:
            _err("".join(traceback.format_exception(exc)).rstrip("\n"))
        _err(f"error: {outcome.message}")
        _finish(outcome, termination_log, pod=pod)
    # Only rank 0 evaluates and reports; the other ranks of a distributed run have no
    # metrics to summarise.
    summary = result.summary() if telemetry.reporting else ""
    if summary:
        _err(summary)
    # The published files and headline metrics ride in the termination message, so the
    # operator fills status.artifacts without credentials for the store (rank 0 only).
    outcome = published(
        telemetry.last_step,
        result.output_uri,
        summary,
        files=result.files if telemetry.reporting else None,
        metrics=result.metrics if telemetry.reporting else None,
        trackers=result.trackers if telemetry.reporting else None,
        gate=result.gate,
    )
    if outcome.exit_code:  # published, but the evaluation gate failed
        _err(f"error: {outcome.message}")
    _finish(outcome, termination_log, pod=pod)


def _finish(outcome: Outcome, termination_log: Path | None, *, pod: bool) -> NoReturn:
    """Leave the termination message (pods only) and exit with the outcome's code."""
    from finetune_trainer.outcome import termination_log_path, write_termination_message

    if pod:
        path, explicit = termination_log_path(termination_log)
        warning = write_termination_message(outcome, path, explicit=explicit)
        if warning is not None:
            _err(warning)
    raise typer.Exit(outcome.exit_code)


def main() -> None:
    app(prog_name="finetune")


if __name__ == "__main__":
    main()
