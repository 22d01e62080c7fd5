"""``finetune generate`` and ``finetune chat``: try a published model from any storage.

Thin: options are checked here (exit 2 naming the option and the fix), everything else
is :mod:`finetune_trainer.inference`, imported inside the commands so that the CLI's
other commands start without torch. The model's text goes to stdout as it is
generated; every other line (what was loaded, the prompt with ``--show-prompt``,
errors) goes to stderr, so ``finetune generate ... > answer.txt`` holds the answer only.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from finetune_api.outcome import ExitCode
from finetune_cli.failures import err as _err
from finetune_cli.failures import exit_on_failure
from finetune_cli.uris import as_uri

if TYPE_CHECKING:
    from finetune_trainer.inference import LoadedModel, Sampling

EXIT_INVALID = int(ExitCode.INVALID_CONFIG)
DTYPES = ("auto", "fp32", "bf16", "fp16")
RESET, EXIT = "/reset", "/exit"

Location = Annotated[
    str,
    typer.Argument(
        metavar="URI",
        help="A published artifact set (adapter or whole model): a local path, or a URI "
        "such as file://./artifacts/x, pvc://claim/x, s3://bucket/x, hf://org/name",
    ),
]
System = Annotated[
    str | None, typer.Option(metavar="TEXT", help="A system message before the user's.")
]
MaxNewTokens = Annotated[
    int, typer.Option(metavar="N", min=1, help="Stop after this many new tokens.")
]
Temperature = Annotated[
    float,
    typer.Option(
        metavar="T", min=0.0, help="0 chooses the likeliest token (greedy); above 0 samples."
    ),
]
TopP = Annotated[
    float,
    typer.Option(
        metavar="P",
        min=0.01,
        max=1.0,
        help="Nucleus sampling (with --temperature > 0): the smallest set of likeliest "
        "tokens whose probabilities add up to P.",
    ),
]
Seed = Annotated[
    int | None, typer.Option(metavar="N", help="Seed the sampler, for repeatable samples.")
]
Dtype = Annotated[
    str,
    typer.Option(
        metavar="DTYPE",
        help="auto (bf16 or fp16 on CUDA, fp32 on CPU), fp32, bf16 or fp16. CUDA is used "
        "when present.",
    ),
]
Base = Annotated[
    str | None,
    typer.Option(
        metavar="URI",
        help="Load an adapter onto this base model instead of the one its job trained on "
        "(e.g. a local copy of a model the cluster read from a volume).",
    ),
]
Verify = Annotated[
    bool,
    typer.Option(
        "--verify/--no-verify",
        help="Check every file against manifest.json (sha256) before loading; --no-verify "
        "loads a model directory that is not a published set (a base model, a Hub repo).",
    ),
]
Merged = Annotated[
    bool,
    typer.Option(
        "--merged",
        help="Load the merged model a job with output.merge published under merged/ "
        "(checked with the set) instead of the adapter.",
    ),
]
ShowPrompt = Annotated[
    bool,
    typer.Option(
        "--show-prompt", help="Print the text the model sees (stderr) before each answer."
    ),
]


def _sampling(
    max_new_tokens: int, temperature: float, top_p: float, seed: int | None, dtype: str
) -> Sampling:
    from finetune_trainer.inference import Sampling

    if dtype not in DTYPES:
        _err(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
        raise typer.Exit(EXIT_INVALID)
    return Sampling(max_new_tokens, temperature, top_p, seed)


@contextmanager
def _loaded(
    location: str, *, verify: bool, base: str | None, dtype: str, merged: bool
) -> Iterator[LoadedModel]:
    """The set at ``location`` loaded; a foreseen failure exits with its code and message
    (a storage error as for a run: 5, or 7 when retrying may help)."""
    from finetune_trainer.inference import load, open_set

    uri = as_uri(location)
    with exit_on_failure(uri):  # also around the caller's block, which runs at the yield
        base_uri = as_uri(base) if base else None
        with open_set(uri, verify=verify, base=base_uri, merged=merged) as artifact:
            loaded = load(artifact, dtype, warn=_err)
            what = artifact.kind if artifact.base_uri is None else f"adapter on {artifact.base_uri}"
            checked = "verified" if verify else "not verified"
            _err(f"loaded {artifact.uri}: {what}, {artifact.task}, {loaded.device} ({checked})")
            yield loaded


def _prompts(values: list[str]) -> list[str]:
    """``-`` stands for stdin, read whole as one prompt."""
    return [sys.stdin.read() if value == "-" else value for value in values]


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def generate(
    location: Location,
    prompt: Annotated[
        list[str],
        typer.Option(
            "--prompt",
            "-p",
            metavar="TEXT",
            help="The user message (repeatable: one answer each, in order); - reads it from stdin.",
        ),
    ],
    system: System = None,
    chat_template: Annotated[
        bool,
        typer.Option(
            "--chat-template/--no-chat-template",
            help="Wrap the prompt in the tokenizer's chat template, as the model was trained; "
            "--no-chat-template completes the text as it is.",
        ),
    ] = True,
    max_new_tokens: MaxNewTokens = 256,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    seed: Seed = None,
    dtype: Dtype = "auto",
    base: Base = None,
    verify: Verify = True,
    merged: Merged = False,
    show_prompt: ShowPrompt = False,
) -> None:
    """Generate an answer to each prompt with a published model, streamed to stdout.

    An adapter set loads onto the base model its job trained on (fetched like the job
    fetched it); a whole model (a full run, a merged export) loads alone. A classifier
    prints each class and its probability, likeliest first, instead of generating; a
    sentence encoder (task sentence-embedding) ranks the other prompts by their cosine
    similarity to the first.

    Exit 2: a bad option or a set without a chat template (use --no-chat-template).
    Exit 4: the model cannot be loaded. Exit 5 (7): the location cannot be read or does
    not match its manifest.json (retrying may help with 7).
    """
    from finetune_trainer.inference import classify, conversation, render, similarities
    from finetune_trainer.inference import generate as run_generate

    sampling = _sampling(max_new_tokens, temperature, top_p, seed, dtype)
    texts = _prompts(prompt)
    # _loaded reports a trainer error raised here too (the block runs at its yield).
    with _loaded(location, verify=verify, base=base, dtype=dtype, merged=merged) as loaded:
        _refuse_reward_model(loaded, location)
        if loaded.embeds:  # a sentence encoder ranks the other prompts against the first
            if len(texts) < 2:
                _err(
                    f"error: {location}: a sentence encoder compares texts; pass a query and "
                    "candidates (-p QUERY -p TEXT -p TEXT ...) to rank them by similarity"
                )
                raise typer.Exit(EXIT_INVALID)
            for candidate, score in similarities(loaded, texts[0], texts[1:]):
                _write(f"{score:.4f}\t{candidate}\n")
            return
        for i, text in enumerate(texts):
            if i:
                _write("\n")
            if loaded.classifies:
                for label, probability in classify(loaded, text):
                    _write(f"{label}\t{probability:.4f}\n")
                continue
            rendered = render(loaded.tokenizer, conversation(text, system), chat_template)
            if show_prompt:
                _err(rendered)
            run_generate(loaded, rendered, sampling, _write, chat_template=chat_template)


def _refuse_reward_model(loaded: LoadedModel, location: str) -> None:
    """A reward model's one output is a score of an answer: nothing to generate or say."""
    if loaded.rewards:
        _err(
            f"error: {location}: a reward model scores answers, it does not generate; use it "
            f"as a reward of task reinforcement (reinforcement.rewards: type model, uri "
            f"{location})"
        )
        raise typer.Exit(EXIT_INVALID)


def chat(
    location: Location,
    system: System = None,
    max_new_tokens: MaxNewTokens = 256,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    seed: Seed = None,
    dtype: Dtype = "auto",
    base: Base = None,
    verify: Verify = True,
    merged: Merged = False,
    show_prompt: ShowPrompt = False,
) -> None:
    """Talk with a published model: one message per line, answers streamed to stdout.

    The conversation is kept and rendered through the model's chat template at every
    turn, so the model sees its earlier answers. /reset starts a new conversation,
    /exit or Ctrl-D ends. Lines can be piped in (a file of questions, one per line).
    Exit codes as for generate.
    """
    from finetune_trainer.inference import Chat

    sampling = _sampling(max_new_tokens, temperature, top_p, seed, dtype)
    with _loaded(location, verify=verify, base=base, dtype=dtype, merged=merged) as loaded:
        _refuse_reward_model(loaded, location)
        if loaded.classifies or loaded.embeds:
            what = "a classifier" if loaded.classifies else "a sentence encoder"
            _err(f"error: {location}: {what} does not chat; use finetune generate -p TEXT")
            raise typer.Exit(EXIT_INVALID)
        session = Chat(loaded, sampling, system)
        interactive = sys.stdin.isatty()
        if interactive:
            _err(f"{RESET} starts over, {EXIT} or Ctrl-D ends")
        try:
            for line in _lines(interactive):
                if line == EXIT:
                    break
                if line == RESET:
                    session.reset()
                    _err("(a new conversation)")
                    continue
                if show_prompt:
                    _err(session.prompt(line))
                session.turn(line, _write)
        except KeyboardInterrupt:  # Ctrl-C ends the chat like Ctrl-D, without a traceback
            _err("")


def _lines(interactive: bool) -> Iterator[str]:
    """The user's non-empty lines until end of input; a prompt on stderr at a terminal."""
    while True:
        if interactive:
            typer.echo("> ", err=True, nl=False)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.strip()
